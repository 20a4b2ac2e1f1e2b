//! What the guest is handed at boot: the flattened device tree.
