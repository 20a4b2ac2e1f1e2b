//! Exit syndromes as a Hypervisor.framework backend gets them: arbitrary ESR values, faulting
//! addresses and register files through `arch::esr`, `arch::mmio` (decode and register
//! write-back), `arch::psci` and `arch::sysreg`, plus the virtual-timer arithmetic a WFI exit
//! uses. Checks that handlers only touch the registers the instruction names, never pass
//! register 31 to the backend, step the PC as the architecture says, and that every error
//! formats.

#![no_main]

use arch::esr::{ec_name, Esr, ExceptionClass};
use arch::mmio::{complete_read, complete_write, decode_data_abort, MmioAccess, MmioDecodeError};
use arch::psci::{
    affinity_info_result, affinity_matches, complete_call, decode_call, decode_call_from_regs,
    AffinityState, Conduit, PsciCall, PsciStatus,
};
use arch::sysreg::{apply_default_policy, decode_sysreg_access, KnownSysreg, SysregError};
use arch::timer::{ticks_to_duration, vtimer_wake, wfi_sleep, TimerWake};
use arch::vcpu_regs::VcpuRegs;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// X0..X30 and the PC. Register 31 is the zero register in every encoding these handlers
/// decode: asking the backend for it is a bug (the real backends would read SP or panic).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Regs {
    x: [u64; 31],
    pc: u64,
}

impl VcpuRegs for Regs {
    fn x(&self, n: u8) -> u64 {
        assert!(n < 31, "handler read register {n} from the backend; 31 is XZR");
        self.x[usize::from(n)]
    }
    fn set_x(&mut self, n: u8, v: u64) {
        assert!(n < 31, "handler wrote register {n} to the backend; 31 is XZR");
        self.x[usize::from(n)] = v;
    }
    fn pc(&self) -> u64 {
        self.pc
    }
    fn set_pc(&mut self, v: u64) {
        self.pc = v;
    }
}

/// Exception classes the backends dispatch on, and some they do not.
const CLASSES: [u64; 10] = [0x24, 0x24, 0x24, 0x18, 0x18, 0x16, 0x17, 0x01, 0x20, 0x3c];

fn syndrome(u: &mut Unstructured<'_>) -> Result<u64> {
    if u.ratio(1u8, 8u8)? {
        return u.arbitrary();
    }
    let ec = if u.ratio(7u8, 8u8)? { *u.choose(&CLASSES)? } else { u.int_in_range(0..=0x3f)? };
    let il = u64::from(u.ratio(15u8, 16u8)?);
    let iss = u64::from(u.arbitrary::<u32>()?) & 0x1ff_ffff;
    // Bits 63:32 (ISS2 on newer cores) are usually zero.
    let high = if u.ratio(1u8, 8u8)? { u64::from(u.arbitrary::<u32>()?) << 32 } else { 0 };
    Ok(high | ec << 26 | il << 25 | iss)
}

fn same_except(before: &Regs, after: &Regs, reg: Option<u8>) {
    for n in 0..31u8 {
        if Some(n) != reg {
            assert_eq!(before.x[usize::from(n)], after.x[usize::from(n)], "x{n} changed");
        }
    }
}

fn data_abort(u: &mut Unstructured<'_>, esr: u64, regs: &mut Regs) -> Result<()> {
    let ipa = u.arbitrary()?;
    let before = regs.clone();
    match decode_data_abort(esr, ipa, regs) {
        Ok(MmioAccess::Read(read)) => {
            assert_eq!(Esr(esr).ec(), ExceptionClass::DataAbortLowerEl);
            assert!(matches!(read.size, 1 | 2 | 4 | 8) && read.reg <= 31, "{read:?}");
            assert_eq!(read.addr, ipa);
            let len = u.int_in_range(0..=12)?;
            let bytes = aperture_fuzz::bytes(u, len)?;
            complete_read(&read, &bytes, regs);
            assert_eq!(regs.pc, before.pc.wrapping_add(4), "PC steps over the load");
            same_except(&before, regs, (read.reg < 31).then_some(read.reg));
            if read.reg < 31 {
                let n = len.min(usize::from(read.size));
                let raw = aperture_fuzz::le_value(&bytes[..n]);
                let value = regs.x[usize::from(read.reg)];
                assert_eq!(value, read.extend(raw));
                if !read.sixty_four {
                    assert_eq!(value >> 32, 0, "a W register write clears bits 63:32");
                }
                if !read.sign_extend && read.size < 8 {
                    assert_eq!(value >> (u32::from(read.size) * 8), 0, "{read:?} {raw:#x}");
                }
            }
        }
        Ok(MmioAccess::Write(write)) => {
            assert!(matches!(write.size, 1 | 2 | 4 | 8), "{write:?}");
            assert_eq!(write.addr, ipa);
            let bytes = write.le_bytes();
            assert!(bytes[usize::from(write.size)..].iter().all(|&b| b == 0), "{write:?}");
            assert_eq!(*regs, before, "decoding changes nothing");
            complete_write(regs);
            assert_eq!(regs.pc, before.pc.wrapping_add(4));
            same_except(&before, regs, None);
        }
        Err(e) => {
            let not_abort = matches!(e, MmioDecodeError::NotDataAbort { .. });
            assert_eq!(not_abort, Esr(esr).ec() != ExceptionClass::DataAbortLowerEl, "{e}");
            assert!(!e.to_string().is_empty());
            assert_eq!(*regs, before, "a refused access changes nothing");
        }
    }
    Ok(())
}

fn sysreg(esr: u64, regs: &mut Regs) {
    let before = regs.clone();
    match decode_sysreg_access(esr) {
        Ok(access) => {
            assert_eq!(Esr(esr).ec(), ExceptionClass::Sys64);
            assert!(access.rt <= 31);
            let _ = access.write_value(regs);
            if let Some(known) = access.known() {
                assert_eq!(known.encoding(), access.reg, "{known}");
                assert_eq!(KnownSysreg::identify(known.encoding()), Some(known));
                let _ = (known.to_string(), known.group().policy(), known.group().reason());
            }
            let _ = access.reg.to_string();
            match apply_default_policy(&access, regs) {
                Ok(decision) => {
                    assert!(!decision.to_string().is_empty());
                    assert_eq!(regs.pc, before.pc.wrapping_add(4));
                    let written = (access.is_read && access.rt < 31).then_some(access.rt);
                    same_except(&before, regs, written);
                    if let Some(rt) = written {
                        assert_eq!(regs.x[usize::from(rt)], 0, "read as zero");
                    }
                }
                Err(e) => {
                    assert!(matches!(e, SysregError::NeedsEmulation { .. }), "{e}");
                    assert!(!e.to_string().is_empty());
                    assert_eq!(*regs, before, "a refused access changes nothing");
                }
            }
        }
        Err(e) => {
            assert_ne!(Esr(esr).ec(), ExceptionClass::Sys64, "{e}");
            assert!(!e.to_string().is_empty());
        }
    }
}

fn is_status(x0: u64) -> bool {
    [
        PsciStatus::Success,
        PsciStatus::NotSupported,
        PsciStatus::InvalidParameters,
        PsciStatus::Denied,
        PsciStatus::AlreadyOn,
        PsciStatus::OnPending,
        PsciStatus::InternalFailure,
        PsciStatus::NotPresent,
        PsciStatus::Disabled,
        PsciStatus::InvalidAddress,
    ]
    .iter()
    .any(|s| s.to_x0() == x0)
}

fn psci(u: &mut Unstructured<'_>, esr: u64, regs: &mut Regs) -> Result<()> {
    let Some(conduit) = Conduit::from_esr(esr) else {
        assert!(!matches!(Esr(esr).ec(), ExceptionClass::Hvc64 | ExceptionClass::Smc64));
        return Ok(());
    };
    let before = regs.clone();
    let call = decode_call_from_regs(esr, regs);
    assert_eq!(*regs, before, "decoding changes nothing");
    let x0 = match call {
        PsciCall::Return(x0) => x0,
        PsciCall::CpuOn(on) => {
            if regs.x[0] as u32 & (1 << 30) == 0 {
                let all = on.target_mpidr | on.entry | on.context_id;
                assert_eq!(all >> 32, 0, "SMC32 arguments are 32-bit: {on:?}");
            }
            let boot = on.boot_regs();
            assert_eq!((boot.pc, boot.x0), (on.entry, on.context_id));
            let mpidr = u.arbitrary()?;
            let _ = affinity_matches(on.target_mpidr, mpidr, 0);
            PsciStatus::Success.to_x0()
        }
        PsciCall::AffinityInfo { target_affinity, lowest_level } => {
            assert!(lowest_level <= 3);
            let n = u.int_in_range(0..=8)?;
            let mut cpus = Vec::with_capacity(n);
            for _ in 0..n {
                let state =
                    *u.choose(&[AffinityState::On, AffinityState::Off, AffinityState::OnPending])?;
                cpus.push((u.arbitrary::<u64>()? & 0xff_00ff_ffff, state));
            }
            let x0 = affinity_info_result(target_affinity, lowest_level, cpus);
            let states = [AffinityState::On, AffinityState::Off, AffinityState::OnPending];
            assert!(
                states.iter().any(|s| s.to_x0() == x0)
                    || x0 == PsciStatus::InvalidParameters.to_x0(),
                "AFFINITY_INFO answered {x0:#x}"
            );
            x0
        }
        PsciCall::Suspend | PsciCall::CpuOff | PsciCall::SystemOff | PsciCall::SystemReset => {
            PsciStatus::Success.to_x0()
        }
    };
    if let PsciCall::Return(x0) = call {
        let id = regs.x[0] as u32;
        let versions = [arch::psci::PSCI_VERSION_1_0, arch::psci::SMCCC_VERSION_1_1];
        assert!(
            is_status(x0)
                || versions.contains(&x0)
                || x0 == arch::psci::MIGRATE_INFO_TYPE_NOT_PRESENT,
            "function {id:#x} answered {x0:#x}"
        );
    }
    complete_call(conduit, regs, x0);
    assert_eq!(regs.x[0], x0);
    assert_eq!(regs.pc, before.pc.wrapping_add(conduit.resume_pc_step()));
    same_except(&before, regs, Some(0));
    Ok(())
}

fn wfx(u: &mut Unstructured<'_>, esr: u64) -> Result<()> {
    let _ = Esr(esr).wfx();
    let (ctl, cval, cntvct, freq): (u64, u64, u64, u64) =
        (u.arbitrary()?, u.arbitrary()?, u.arbitrary()?, u.arbitrary()?);
    let max = std::time::Duration::from_millis(u.int_in_range(0..=1000)?);
    let wake = vtimer_wake(ctl, cval, cntvct);
    if let TimerWake::In(ticks) = wake {
        assert!(ticks > 0 && cntvct.checked_add(ticks) == Some(cval));
        let _ = ticks_to_duration(ticks, freq);
    }
    match wfi_sleep(ctl, cval, cntvct, freq, max) {
        None => assert_eq!(wake, TimerWake::Now),
        Some(sleep) => assert!(sleep <= max, "{sleep:?} > {max:?}"),
    }
    Ok(())
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let mut regs = Regs { x: [0; 31], pc: u.arbitrary()? };
    for (n, x) in regs.x.iter_mut().enumerate() {
        *x = if u.ratio(1u8, 2u8)? { u.arbitrary()? } else { 0xa5a5_0000_0000_0000 | n as u64 };
    }
    for _ in 0..aperture_fuzz::MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=9u8)? {
            0 => {
                let n = u.int_in_range(0..=30usize)?;
                regs.x[n] = u.arbitrary()?;
            }
            1 => regs.pc = u.arbitrary()?,
            2 => {
                // An SMCCC call: a function id the dispatcher knows, with any arguments.
                let base: u32 = *u.choose(&[0x8400_0000, 0xc400_0000, 0x8000_0000, 0x8000_8000])?;
                regs.x[0] = u64::from(base | u32::from(u.int_in_range(0..=0x14u8)?))
                    | if u.ratio(1u8, 8u8)? { u.arbitrary::<u64>()? << 32 } else { 0 };
                let (x1, x2, x3) = (u.arbitrary()?, u.arbitrary()?, u.arbitrary()?);
                let _ = decode_call(regs.x[0], x1, x2, x3);
            }
            _ => {
                let esr = syndrome(u)?;
                let syndrome = Esr(esr);
                let raw = ((esr >> 26) & 0x3f) as u8;
                assert_eq!(syndrome.ec().raw(), raw);
                assert_eq!(ExceptionClass::from_raw(raw), syndrome.ec());
                let _ = (syndrome.ec().to_string(), ec_name(raw), syndrome.iss(), syndrome.imm16());
                let da = syndrome.data_abort();
                let _ = (da.fault_status(), da.fault_status().to_string());
                // Every handler sees every syndrome: each must refuse the ones not its own.
                data_abort(u, esr, &mut regs)?;
                sysreg(esr, &mut regs);
                psci(u, esr, &mut regs)?;
                wfx(u, esr)?;
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
