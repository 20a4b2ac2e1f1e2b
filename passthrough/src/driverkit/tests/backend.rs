//! The backend: one VM per device, although the dext would share it.

use std::path::PathBuf;
use std::sync::Arc;

use super::fake::{fake, FakeHandle, ADDRESS};
use crate::dma::MapperLimits;
use crate::driverkit::{DextBackend, DextConnection, DextError, MsiSink};
use crate::host::{DmaRequest, FunctionRequest, HostBackend, HostError};

fn backend(fake: &FakeHandle, lock_dir: PathBuf) -> DextBackend {
    let fake = fake.clone();
    let sink: MsiSink = Arc::new(|_, _| {});
    DextBackend::new(
        Box::new(move |_| Ok(Arc::new(fake.connect()) as Arc<dyn DextConnection>)),
        Box::new(move |_| sink.clone()),
    )
    .with_lock_dir(lock_dir)
}

#[test]
fn a_second_vm_is_refused_before_its_claim_and_told_who_holds_the_device() {
    let (_first_client, fake) = fake();
    let dir = std::env::temp_dir().join(format!("aperture-backend-test-{}", std::process::id()));
    let request = FunctionRequest {
        address: ADDRESS.parse().unwrap(),
        dma: DmaRequest::Window(MapperLimits::APPLE_DART),
    };
    let mut first = backend(&fake, dir.clone());
    let function = first.open(&request).unwrap();
    assert_eq!(fake.state().claims, 1);
    let mut second = backend(&fake, dir.clone());
    let err = second.open(&request).unwrap_err();
    assert!(
        matches!(&err, HostError::Dext(DextError::InUse { holder: Some(pid), .. })
            if *pid == std::process::id()),
        "{err:?}"
    );
    assert_eq!(fake.state().claims, 1, "the dext would have granted a secondary claim");
    // The first VM is gone: the device is free again.
    drop(function);
    second.open(&request).unwrap();
    assert_eq!(fake.state().claims, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_device_the_dext_loses_is_reported_once_as_gone() {
    use crate::host::{LossReason, OpenedFunction};

    let (_client, fake) = fake();
    let dir = std::env::temp_dir().join(format!("aperture-loss-test-{}", std::process::id()));
    let request = FunctionRequest {
        address: ADDRESS.parse().unwrap(),
        dma: DmaRequest::Window(MapperLimits::APPLE_DART),
    };
    let mut backend = backend(&fake, dir.clone());
    let function = backend.open(&request).unwrap();
    let watch = function.loss_watch().unwrap();
    // The interrupt thread runs once the function's interrupts exist.
    let (interrupts, _) = function.interrupts();
    assert_eq!(watch.poll(), None, "the device is there");
    fake.state().gone = true;
    fake.raise(&[0]);
    let start = std::time::Instant::now();
    let mut reported = None;
    while reported.is_none() && start.elapsed() < std::time::Duration::from_secs(5) {
        reported = watch.poll();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(reported, Some(LossReason::Gone));
    assert_eq!(watch.poll(), None, "reported once");
    drop(interrupts);
    drop(function);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_no_device_not_attached_and_aborted_mean_gone() {
    use crate::driverkit::protocol::{
        Selector, IO_RETURN_ABORTED, IO_RETURN_BUSY, IO_RETURN_NOT_ATTACHED, IO_RETURN_NO_DEVICE,
    };
    let call = |code| DextError::Call { selector: Selector::WaitInterrupt, code };
    for code in [IO_RETURN_NO_DEVICE, IO_RETURN_NOT_ATTACHED, IO_RETURN_ABORTED] {
        assert!(call(code).device_gone(), "{code:#x}");
    }
    assert!(!call(IO_RETURN_BUSY).device_gone());
}
