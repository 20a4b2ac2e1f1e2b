//! The OS half of vhost-net: the `/dev/vhost-net` ioctls (Linux only).

mod linux;

pub use linux::{open_vhost_net, VHOST_IOCTLS};
