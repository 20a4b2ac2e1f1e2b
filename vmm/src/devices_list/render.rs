//! The device list as an aligned table (people) or a JSON array (scripts; hand-written, the
//! field names are stable).

use std::fmt::Write;

use passthrough::dma::Bytes;

use super::{Assignable, Bar, BarSpace, PciDevice};

const HEADER: [&str; 7] = ["ADDRESS", "IDS", "CLASS", "DRIVER", "GROUP", "BARS", "ASSIGNABLE"];

/// "0:mem64-pf 16 GiB"; the ROM is "rom 64 KiB".
fn bar_text(bar: &Bar) -> String {
    let pf = if bar.prefetchable { "-pf" } else { "" };
    match bar.kind {
        BarSpace::Rom => format!("rom {}", Bytes(bar.size)),
        kind => format!("{}:{}{pf} {}", bar.index, kind.name(), Bytes(bar.size)),
    }
}

fn row(device: &PciDevice) -> [String; 7] {
    let bars: Vec<String> = device.bars.iter().map(bar_text).collect();
    [
        device.address.to_string(),
        format!("{:04x}:{:04x}", device.vendor_id, device.device_id),
        format!("{:06x} {}", device.class, super::class_name(device.class)),
        device.driver.clone().unwrap_or_else(|| "-".into()),
        device.iommu_group.map_or("-".into(), |g| g.to_string()),
        if bars.is_empty() { "-".into() } else { bars.join(", ") },
        match &device.assignable {
            Assignable::Yes => "yes".into(),
            Assignable::No { reason, .. } => format!("no: {reason}"),
        },
    ]
}

/// "Vendor Device" from pci.ids, when the vendor is known.
fn names(device: &PciDevice) -> Option<String> {
    let vendor = device.vendor_name.as_deref()?;
    Some(match device.device_name.as_deref() {
        Some(name) => format!("{vendor} {name}"),
        None => format!("{vendor} (device {:04x})", device.device_id),
    })
}

/// One row per device, columns aligned; the pci.ids names on a line below, under IDS.
pub fn table(devices: &[PciDevice]) -> String {
    if devices.is_empty() {
        return "no PCI devices in /sys/bus/pci/devices\n".into();
    }
    let header = HEADER.map(str::to_owned);
    let rows: Vec<[String; 7]> = devices.iter().map(row).collect();
    let mut widths = [0; 7];
    for cells in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(cells) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 7]| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        text.trim_end().to_string() + "\n"
    };
    let mut out = line(&header);
    for (device, cells) in devices.iter().zip(&rows) {
        out.push_str(&line(cells));
        if let Some(names) = names(device) {
            let _ = writeln!(out, "{:indent$}{names}", "", indent = widths[0] + 2);
        }
    }
    out
}

/// `text` as a JSON string, quoted and escaped.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    devices::trace::json_string(&mut out, text);
    out
}

fn json_opt(text: Option<&str>) -> String {
    text.map_or("null".into(), json_string)
}

fn json_object(device: &PciDevice) -> String {
    let bars: Vec<String> = device
        .bars
        .iter()
        .map(|bar| {
            format!(
                "{{\"index\":{},\"type\":\"{}\",\"prefetchable\":{},\"size\":{}}}",
                bar.index,
                bar.kind.name(),
                bar.prefetchable,
                bar.size
            )
        })
        .collect();
    let (assignable, reason, message) = match &device.assignable {
        Assignable::Yes => (true, None, None),
        Assignable::No { reason, message } => {
            (false, Some(reason.as_str()), Some(message.as_str()))
        }
    };
    format!(
        "{{\"address\":\"{}\",\"vendor_id\":\"{:04x}\",\"device_id\":\"{:04x}\",\
         \"vendor_name\":{},\"device_name\":{},\"class\":\"{:06x}\",\"class_name\":{},\
         \"driver\":{},\"iommu_group\":{},\"bars\":[{}],\"assignable\":{assignable},\
         \"reason\":{},\"message\":{}}}",
        device.address,
        device.vendor_id,
        device.device_id,
        json_opt(device.vendor_name.as_deref()),
        json_opt(device.device_name.as_deref()),
        device.class,
        json_string(super::class_name(device.class)),
        json_opt(device.driver.as_deref()),
        device.iommu_group.map_or("null".into(), |g| g.to_string()),
        bars.join(","),
        json_opt(reason),
        json_opt(message),
    )
}

/// A JSON array, one device object per line.
pub fn json(devices: &[PciDevice]) -> String {
    if devices.is_empty() {
        return "[]\n".into();
    }
    let objects: Vec<String> = devices.iter().map(|d| format!("  {}", json_object(d))).collect();
    format!("[\n{}\n]\n", objects.join(",\n"))
}

/// `aperture devices` on macOS: what the dext serves.
#[cfg(any(test, all(target_os = "macos", target_arch = "aarch64")))]
pub fn dext_listing(
    survey: &Result<Vec<String>, passthrough::driverkit::DextError>,
    as_json: bool,
) -> String {
    use crate::host::DEXT_FIX;

    let serving = survey.as_ref().map(Vec::as_slice).unwrap_or_default();
    if as_json {
        let objects: Vec<String> = serving
            .iter()
            .map(|a| format!("  {{\"address\":\"{a}\",\"driver\":\"VFIOUserPCIDriver\",\"assignable\":true}}"))
            .collect();
        return if objects.is_empty() {
            "[]\n".into()
        } else {
            format!("[\n{}\n]\n", objects.join(",\n"))
        };
    }
    let mut text = String::from(
        "on macOS, devices are listed by the dext: Aperture can assign the PCI devices the \
         VFIOUserPCIDriver extension serves (System Information > PCI lists all of them).\n",
    );
    match survey {
        Ok(serving) if !serving.is_empty() => {
            text.push_str(&format!("VFIOUserPCIDriver serves: {}\n", serving.join(", ")))
        }
        Ok(_) => text.push_str(&format!("it serves none now; {DEXT_FIX}\n")),
        Err(e) => text.push_str(&format!("{e}\n")),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing() {
        let text = dext_listing(&Ok(vec!["0a:00.0".into()]), false);
        assert!(text.starts_with("on macOS, devices are listed by the dext: "));
        assert!(text.contains("VFIOUserPCIDriver serves: 0a:00.0"));
        assert!(dext_listing(&Ok(vec![]), false).contains("it serves none now"));
        assert_eq!(
            dext_listing(&Ok(vec!["0a:00.0".into()]), true),
            "[\n  {\"address\":\"0a:00.0\",\"driver\":\"VFIOUserPCIDriver\",\"assignable\":true}\n]\n"
        );
        assert_eq!(dext_listing(&Ok(vec![]), true), "[]\n");
    }
}
