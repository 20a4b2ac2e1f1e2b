//! The PrimeCell identification registers every ARM AMBA peripheral has at 0xfe0..=0xffc.
//!
//! Linux's AMBA bus reads them to pick a driver: four peripheral-ID bytes, then four
//! component-ID bytes, each in the low byte of a 32-bit register.

/// Offset of the first ID register (PeriphID0).
const ID_FIRST: u64 = 0xfe0;
/// Offset of the last ID register (CellID3).
const ID_LAST: u64 = 0xffc;
/// The PrimeCell component ID, common to all PrimeCells.
const CELL_ID: u32 = 0xb105_f00d;

/// The value of the ID register at `offset` for a peripheral with `periph_id`, or `None` if
/// `offset` is not an ID register.
pub(crate) fn id_register(periph_id: u32, offset: u64) -> Option<u32> {
    if !(ID_FIRST..=ID_LAST).contains(&offset) || offset % 4 != 0 {
        return None;
    }
    let index = (offset - ID_FIRST) / 4;
    let word = if index < 4 { periph_id } else { CELL_ID };
    Some((word >> ((index % 4) * 8)) & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_bytes_in_order() {
        let ids: Vec<u32> =
            (0..8).map(|i| id_register(0x0014_1011, 0xfe0 + i * 4).unwrap()).collect();
        assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        assert_eq!(id_register(0x0014_1011, 0xfdc), None);
        assert_eq!(id_register(0x0014_1011, 0xfe1), None);
        assert_eq!(id_register(0x0014_1011, 0x1000), None);
    }
}
