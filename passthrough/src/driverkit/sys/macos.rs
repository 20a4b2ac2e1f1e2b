//! IOKit: finds the VFIOUserPCIDriver dext's service for a PCI function and implements
//! [`DextConnection`] over its user client. Nothing here decides anything; the logic is in
//! the portable modules.
//!
//! The dext's services are `IOUserService` registry entries whose `IOUserClass` is
//! [`DEXT_CLASS`]; each serves one function, which GetIdentity names. WaitInterrupt is an
//! async method: it is armed with IOConnectCallAsyncScalarMethod on a notification port's
//! mach port, and the wait thread blocks in `mach_msg` on that port (with a timeout, so that
//! it can stop), then dispatches the completion to learn its result. The dext has no blocking
//! variant.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use core_foundation_sys::base::{kCFAllocatorDefault, CFGetTypeID, CFIndex, CFRelease, CFTypeRef};
use core_foundation_sys::string::{
    kCFStringEncodingUTF8, CFStringCreateWithCString, CFStringGetCString, CFStringGetTypeID,
    CFStringRef,
};
use io_kit_sys::ret::IOReturn;
use io_kit_sys::types::{
    io_connect_t, io_object_t, io_service_t, kIOMapAnywhere, kIOMapWriteCombineCache,
};
use io_kit_sys::{
    IOConnectCallAsyncScalarMethod, IOConnectCallScalarMethod, IOConnectMapMemory64,
    IOConnectUnmapMemory64, IODispatchCalloutFromMessage, IOIteratorNext, IONotificationPortCreate,
    IONotificationPortDestroy, IONotificationPortGetMachPort, IONotificationPortRef,
    IOObjectRelease, IORegistryEntryCreateCFProperty, IOServiceClose, IOServiceGetMatchingServices,
    IOServiceMatching, IOServiceOpen,
};
use log::debug;

use crate::driverkit::connection::{
    call_exact, DextConnection, DextError, DextMapping, WaitOutcome,
};
use crate::driverkit::protocol::{
    self, MemoryType, Selector, DEXT_CLASS, IDENTITY_WORDS, IO_RETURN_SUCCESS,
};
use crate::pci_address::PciAddress;

// The portable IOReturn values are IOKit's.
const _: () = {
    use io_kit_sys::ret::*;
    assert!(protocol::IO_RETURN_SUCCESS == kIOReturnSuccess);
    assert!(protocol::IO_RETURN_BAD_ARGUMENT == kIOReturnBadArgument);
    assert!(protocol::IO_RETURN_UNSUPPORTED == kIOReturnUnsupported);
    assert!(protocol::IO_RETURN_NOT_OPEN == kIOReturnNotOpen);
    assert!(protocol::IO_RETURN_NOT_ALIGNED == kIOReturnNotAligned);
    assert!(protocol::IO_RETURN_STILL_OPEN == kIOReturnStillOpen);
    assert!(protocol::IO_RETURN_NOT_READY == kIOReturnNotReady);
    assert!(protocol::IO_RETURN_NO_SPACE == kIOReturnNoSpace);
    assert!(protocol::IO_RETURN_NOT_FOUND == kIOReturnNotFound);
    assert!(protocol::IO_RETURN_NO_MEMORY == kIOReturnNoMemory);
};

/// `kIOMainPortDefault`: MACH_PORT_NULL selects the default main port.
const MAIN_PORT_DEFAULT: u32 = 0;
/// OSMessageNotification.h: words of an async reference, and the callout's slots in it.
const ASYNC_REF_WORDS: usize = 8;
const ASYNC_CALLOUT_FUNC: usize = 1;
const ASYNC_CALLOUT_REFCON: usize = 2;
const ASYNC_CALLOUT_COUNT: u32 = 3;
/// mach/message.h.
const MACH_RCV_MSG: i32 = 0x2;
const MACH_RCV_TIMEOUT: i32 = 0x100;
const MACH_MSG_SUCCESS: i32 = 0;
const MACH_RCV_TIMED_OUT: i32 = 0x1000_4003;

/// mach_msg_header_t.
#[repr(C)]
#[derive(Debug, Default)]
struct MachMsgHeader {
    bits: u32,
    size: u32,
    remote_port: u32,
    local_port: u32,
    voucher_port: u32,
    id: i32,
}

/// Room for an async completion message (header, up to 16 arguments) and its trailer.
#[repr(C)]
struct MessageBuffer {
    header: MachMsgHeader,
    body: [u64; 128],
}

extern "C" {
    /// The task's own port (what `mach_task_self()` returns).
    static mach_task_self_: u32;
    fn mach_msg(
        msg: *mut MachMsgHeader,
        option: i32,
        send_size: u32,
        rcv_size: u32,
        rcv_name: u32,
        timeout: u32,
        notify: u32,
    ) -> i32;
}

fn task_self() -> u32 {
    // SAFETY: a constant the system sets before main; reading it has no side effects.
    unsafe { mach_task_self_ }
}

/// An IOKit object reference, released on drop.
struct Object(io_object_t);

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: we own this reference.
        unsafe { IOObjectRelease(self.0) };
    }
}

/// A Core Foundation reference, released on drop.
struct CfOwned(CFTypeRef);

impl CfOwned {
    fn new(value: CFTypeRef) -> Option<Self> {
        (!value.is_null()).then_some(Self(value))
    }
}

impl Drop for CfOwned {
    fn drop(&mut self) {
        // SAFETY: we own this (non-null) reference.
        unsafe { CFRelease(self.0) };
    }
}

/// The service's `IOUserClass` property.
fn user_class(service: io_service_t) -> Option<String> {
    // SAFETY: a NUL-terminated constant; returns a new CFString or null.
    let key = unsafe {
        CFStringCreateWithCString(
            kCFAllocatorDefault,
            c"IOUserClass".as_ptr(),
            kCFStringEncodingUTF8,
        )
    };
    let key = CfOwned::new(key as CFTypeRef)?;
    // SAFETY: `service` is a live object and `key` a CFString; returns a new reference or null.
    let value = unsafe {
        IORegistryEntryCreateCFProperty(service, key.0 as CFStringRef, kCFAllocatorDefault, 0)
    };
    let value = CfOwned::new(value)?;
    // SAFETY: `value` is a valid CF object.
    if unsafe { CFGetTypeID(value.0) != CFStringGetTypeID() } {
        return None;
    }
    let mut buffer = [0 as c_char; 128];
    // SAFETY: `value` is a CFString; the buffer is writable for the length given.
    let ok = unsafe {
        CFStringGetCString(
            value.0 as CFStringRef,
            buffer.as_mut_ptr(),
            buffer.len() as CFIndex,
            kCFStringEncodingUTF8,
        )
    };
    if ok == 0 {
        return None;
    }
    // SAFETY: CFStringGetCString succeeded, so the buffer holds a NUL-terminated string.
    let text = unsafe { CStr::from_ptr(buffer.as_ptr()) };
    Some(text.to_string_lossy().into_owned())
}

/// An open user-client connection, closed when the last user (connection or mapping) goes.
#[derive(Debug)]
struct Handle {
    connect: io_connect_t,
}

impl Handle {
    fn open(service: io_service_t) -> Result<Self, IOReturn> {
        let mut connect: io_connect_t = 0;
        // SAFETY: `service` is live; `connect` is a valid out pointer.
        let kr = unsafe { IOServiceOpen(service, task_self(), 0, &mut connect) };
        if kr != IO_RETURN_SUCCESS {
            return Err(kr);
        }
        Ok(Self { connect })
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: closes the connection IOServiceOpen gave us; nothing uses it afterwards.
        unsafe { IOServiceClose(self.connect) };
    }
}

/// A mapping made by IOConnectMapMemory64; keeps the connection open while it lives.
#[derive(Debug)]
struct IoKitMapping {
    handle: Arc<Handle>,
    memory_type: u32,
    addr: u64,
    len: u64,
}

impl DextMapping for IoKitMapping {
    fn addr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for IoKitMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping IOConnectMapMemory64 made; its users (the guest's
        // BAR mapping, the interrupt thread) are gone.
        let kr = unsafe {
            IOConnectUnmapMemory64(self.handle.connect, self.memory_type, task_self(), self.addr)
        };
        if kr != IO_RETURN_SUCCESS {
            debug!("unmapping dext memory type {}: {kr:#x}", self.memory_type);
        }
    }
}

/// The notification port WaitInterrupt completes on.
#[derive(Debug)]
struct Waiter {
    port: IONotificationPortRef,
    mach_port: u32,
    armed: bool,
}

// SAFETY: the port is only used under the connection's mutex, by one thread at a time.
unsafe impl Send for Waiter {}

impl Drop for Waiter {
    fn drop(&mut self) {
        // SAFETY: destroys the port IONotificationPortCreate made; nothing waits on it now.
        unsafe { IONotificationPortDestroy(self.port) };
    }
}

/// Where the completion callout stores WaitInterrupt's result.
unsafe extern "C" fn wait_completed(
    refcon: *mut c_void,
    result: IOReturn,
    _args: *mut *mut c_void,
    _count: u32,
) {
    if !refcon.is_null() {
        // SAFETY: `refcon` is the connection's boxed result cell, alive while it dispatches.
        unsafe { (*(refcon as *const AtomicI32)).store(result, Ordering::Release) };
    }
}

/// A connection to the dext's user client for one PCI function.
#[derive(Debug)]
pub struct IoKitConnection {
    handle: Arc<Handle>,
    waiter: Mutex<Option<Waiter>>,
    /// Boxed: its address goes to the kernel with each WaitInterrupt.
    wait_result: Box<AtomicI32>,
}

impl IoKitConnection {
    fn new(handle: Handle) -> Self {
        Self {
            handle: Arc::new(handle),
            waiter: Mutex::new(None),
            wait_result: Box::new(AtomicI32::new(IO_RETURN_SUCCESS)),
        }
    }

    /// Connects to the dext instance serving `address` (bus, device and function; macOS does
    /// not number PCI domains as Linux does).
    pub fn open(address: PciAddress) -> Result<Self, DextError> {
        // SAFETY: a NUL-terminated constant; returns a new dictionary or null.
        let matching = unsafe { IOServiceMatching(c"IOUserService".as_ptr()) };
        if matching.is_null() {
            return Err(DextError::IoKit {
                what: "IOServiceMatching(IOUserService)".into(),
                code: protocol::IO_RETURN_NO_MEMORY,
            });
        }
        let mut iterator = 0;
        // SAFETY: consumes the dictionary's reference; `iterator` is a valid out pointer.
        let kr =
            unsafe { IOServiceGetMatchingServices(MAIN_PORT_DEFAULT, matching, &mut iterator) };
        if kr != IO_RETURN_SUCCESS {
            return Err(DextError::IoKit { what: "IOServiceGetMatchingServices".into(), code: kr });
        }
        let iterator = Object(iterator);
        let wanted = (address.bus, address.device, address.function);
        let mut found = Vec::new();
        let mut serving = Vec::new();
        let mut open_error = None;
        loop {
            // SAFETY: `iterator` is live; returns a new reference or 0 at the end.
            let service = unsafe { IOIteratorNext(iterator.0) };
            if service == 0 {
                break;
            }
            let service = Object(service);
            if user_class(service.0).as_deref() != Some(DEXT_CLASS) {
                continue;
            }
            let connection = match Handle::open(service.0) {
                Ok(handle) => Self::new(handle),
                Err(code) => {
                    open_error = Some(code);
                    continue;
                }
            };
            match call_exact::<IDENTITY_WORDS>(&connection, Selector::GetIdentity, &[]) {
                // The dext reports 8-bit bus, device and function.
                Ok(id) if (id[0] as u8, id[1] as u8, id[2] as u8) == wanted => {
                    found.push(connection)
                }
                Ok(id) => serving.push(format!("{:02x}:{:02x}.{:x}", id[0], id[1], id[2])),
                Err(e) => debug!("a {DEXT_CLASS} instance: {e}"),
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => match open_error {
                Some(code) if serving.is_empty() => {
                    Err(DextError::OpenUserClient { address, code })
                }
                _ => Err(DextError::NoService { address, serving }),
            },
            count => Err(DextError::Ambiguous { address, count }),
        }
    }

    /// Arms WaitInterrupt on the waiter's port.
    fn arm(&self, waiter: &mut Waiter) -> Result<(), DextError> {
        let mut reference = [0u64; ASYNC_REF_WORDS];
        reference[ASYNC_CALLOUT_FUNC] = wait_completed as *const () as usize as u64;
        reference[ASYNC_CALLOUT_REFCON] = &*self.wait_result as *const AtomicI32 as usize as u64;
        let mut outputs = 0u32;
        // SAFETY: the reference array and output count are valid for the call; the callout
        // and its refcon stay valid while this connection lives (the box does not move).
        let kr = unsafe {
            IOConnectCallAsyncScalarMethod(
                self.handle.connect,
                Selector::WaitInterrupt.code(),
                waiter.mach_port,
                reference.as_mut_ptr(),
                ASYNC_CALLOUT_COUNT,
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
                &mut outputs,
            )
        };
        if kr != IO_RETURN_SUCCESS {
            return Err(DextError::Call { selector: Selector::WaitInterrupt, code: kr });
        }
        waiter.armed = true;
        Ok(())
    }
}

impl DextConnection for IoKitConnection {
    fn call(
        &self,
        selector: Selector,
        input: &[u64],
        output: &mut [u64],
    ) -> Result<usize, DextError> {
        let invalid = || DextError::Call { selector, code: protocol::IO_RETURN_BAD_ARGUMENT };
        let inputs = u32::try_from(input.len()).map_err(|_| invalid())?;
        let mut outputs = u32::try_from(output.len()).map_err(|_| invalid())?;
        // SAFETY: `input` and `output` are valid for the counts given; IOKit writes at most
        // `outputs` scalars and updates the count.
        let kr = unsafe {
            IOConnectCallScalarMethod(
                self.handle.connect,
                selector.code(),
                input.as_ptr(),
                inputs,
                output.as_mut_ptr(),
                &mut outputs,
            )
        };
        if kr != IO_RETURN_SUCCESS {
            return Err(DextError::Call { selector, code: kr });
        }
        Ok((outputs as usize).min(output.len()))
    }

    fn map_memory(&self, memory: MemoryType) -> Result<Arc<dyn DextMapping>, DextError> {
        let cache = match memory {
            MemoryType::Bar { write_combine: true, .. } => kIOMapWriteCombineCache,
            _ => 0,
        };
        let options = (kIOMapAnywhere | cache) as u32;
        let mut addr: u64 = 0;
        let mut len: u64 = 0;
        // SAFETY: `addr` and `len` are valid out pointers; kIOMapAnywhere lets the kernel pick
        // a free range of this task.
        let kr = unsafe {
            IOConnectMapMemory64(
                self.handle.connect,
                memory.code(),
                task_self(),
                &mut addr,
                &mut len,
                options,
            )
        };
        if kr != IO_RETURN_SUCCESS {
            return Err(DextError::Map { memory, code: kr });
        }
        debug!("mapped {memory} of the dext at {addr:#x}+{len:#x}");
        Ok(Arc::new(IoKitMapping {
            handle: self.handle.clone(),
            memory_type: memory.code(),
            addr,
            len,
        }))
    }

    fn wait_interrupt(&self, timeout: Duration) -> Result<WaitOutcome, DextError> {
        let mut guard = self.waiter.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            // SAFETY: creates a notification port on the default main port, or null.
            let port = unsafe { IONotificationPortCreate(MAIN_PORT_DEFAULT) };
            if port.is_null() {
                return Err(DextError::IoKit {
                    what: "IONotificationPortCreate".into(),
                    code: protocol::IO_RETURN_NO_MEMORY,
                });
            }
            // SAFETY: `port` is the live port just created.
            let mach_port = unsafe { IONotificationPortGetMachPort(port) };
            *guard = Some(Waiter { port, mach_port, armed: false });
        }
        let Some(waiter) = guard.as_mut() else {
            return Ok(WaitOutcome::TimedOut);
        };
        if !waiter.armed {
            self.arm(waiter)?;
        }
        let mut message = MessageBuffer { header: MachMsgHeader::default(), body: [0; 128] };
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: the buffer is writable for the size given; we hold the receive right of the
        // notification port.
        let kr = unsafe {
            mach_msg(
                &mut message.header,
                MACH_RCV_MSG | MACH_RCV_TIMEOUT,
                0,
                std::mem::size_of::<MessageBuffer>() as u32,
                waiter.mach_port,
                timeout_ms,
                0,
            )
        };
        match kr {
            MACH_MSG_SUCCESS => {
                waiter.armed = false;
                self.wait_result.store(IO_RETURN_SUCCESS, Ordering::Release);
                // SAFETY: `message` holds the async completion just received on the waiter's
                // port; dispatching calls `wait_completed` with the boxed result cell.
                unsafe {
                    IODispatchCalloutFromMessage(
                        std::ptr::null_mut(),
                        (&mut message.header as *mut MachMsgHeader).cast(),
                        waiter.port.cast(),
                    )
                };
                match self.wait_result.load(Ordering::Acquire) {
                    IO_RETURN_SUCCESS => Ok(WaitOutcome::Signalled),
                    code => Err(DextError::Call { selector: Selector::WaitInterrupt, code }),
                }
            }
            MACH_RCV_TIMED_OUT => Ok(WaitOutcome::TimedOut),
            code => Err(DextError::IoKit {
                what: "receiving the dext's interrupt notification (mach_msg)".into(),
                code,
            }),
        }
    }
}
