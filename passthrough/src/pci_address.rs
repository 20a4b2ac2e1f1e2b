//! Host PCI addresses (`domain:bus:device.function`).

use std::fmt;
use std::str::FromStr;

/// A host PCI function address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// PCI segment (domain).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

/// A malformed PCI address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a PCI address; write it as lspci -D shows it, e.g. 0000:01:00.0")]
pub struct PciAddressError(pub String);

impl FromStr for PciAddress {
    type Err = PciAddressError;

    /// Parses `DDDD:BB:DD.F`, or `BB:DD.F` in domain 0.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || PciAddressError(text.to_string());
        let (rest, function) = text.rsplit_once('.').ok_or_else(error)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [domain, bus, device] => (*domain, *bus, *device),
            [bus, device] => ("0", *bus, *device),
            _ => return Err(error()),
        };
        let hex = |s: &str, max_len: usize| {
            (!s.is_empty() && s.len() <= max_len && s.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
        };
        let domain = hex(domain, 4).ok_or_else(error)?;
        let bus = hex(bus, 2).ok_or_else(error)?;
        let device = hex(device, 2).filter(|d| *d < 32).ok_or_else(error)?;
        let function = hex(function, 1).filter(|f| *f < 8).ok_or_else(error)?;
        Ok(Self {
            domain: domain as u16,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.device, self.function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let a: PciAddress = "0000:01:00.0".parse().unwrap();
        assert_eq!(a, PciAddress { domain: 0, bus: 1, device: 0, function: 0 });
        assert_eq!(a.to_string(), "0000:01:00.0");
        let b: PciAddress = "0a:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:0a:1f.7");
        let c: PciAddress = "ABCD:FF:00.3".parse().unwrap();
        assert_eq!(c.to_string(), "abcd:ff:00.3");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "1:2:3:4.0",
            "zz:00.0",
            "0000:100:00.0",
            "01:00.0x",
        ] {
            let err = bad.parse::<PciAddress>().unwrap_err();
            assert!(err.to_string().contains("lspci -D"), "{bad}: {err}");
        }
    }
}
