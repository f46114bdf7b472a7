//! CMOS RAM and real-time clock (ports 0x70-0x71), enough for Linux's boot-time clock read.
//!
//! Time registers read the host's UTC clock in BCD, 24-hour mode; status A never reports an
//! update in progress; the extended-memory registers describe guest RAM as a PC BIOS would.

use address_space::IoHandler;
use std::time::{SystemTime, UNIX_EPOCH};

const INDEX_MASK: u8 = 0x7f; // bit 7 of the index port is the NMI-disable bit
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
const STATUS_A_DIVIDER_32K: u8 = 0x26;
const STATUS_B_24H: u8 = 0x02;
const STATUS_D_VALID_RAM: u8 = 0x80;

/// The CMOS/RTC: index port at offset 0, data port at offset 1.
#[derive(Debug, Clone)]
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
}

/// A calendar time in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CivilTime {
    year: u32,
    month: u8,
    day: u8,
    weekday: u8, // 1 = Sunday, as the RTC counts
    hours: u8,
    minutes: u8,
    seconds: u8,
}

impl Cmos {
    /// A CMOS whose memory-size registers describe `ram_below_4g` and `ram_above_4g` bytes.
    pub fn new(ram_below_4g: u64, ram_above_4g: u64) -> Self {
        let mut ram = [0u8; 128];
        // 0x34/0x35: RAM between 16 MiB and 4 GiB, in 64 KiB units.
        let mid = ram_below_4g.saturating_sub(16 << 20) >> 16;
        let mid = u16::try_from(mid).unwrap_or(u16::MAX);
        ram[0x34..0x36].copy_from_slice(&mid.to_le_bytes());
        // 0x5b..0x5d: RAM above 4 GiB, in 64 KiB units (24 bits).
        let high = (ram_above_4g >> 16).min(0xff_ffff) as u32;
        ram[0x5b..0x5e].copy_from_slice(&high.to_le_bytes()[..3]);
        Self { index: 0, ram }
    }

    fn register(&self, index: u8) -> u8 {
        let now = civil_time_now();
        match index {
            REG_SECONDS => bcd(now.seconds),
            REG_MINUTES => bcd(now.minutes),
            REG_HOURS => bcd(now.hours),
            REG_WEEKDAY => bcd(now.weekday),
            REG_DAY => bcd(now.day),
            REG_MONTH => bcd(now.month),
            REG_YEAR => bcd((now.year % 100) as u8),
            REG_CENTURY => bcd((now.year / 100 % 100) as u8),
            REG_STATUS_A => STATUS_A_DIVIDER_32K,
            REG_STATUS_B => STATUS_B_24H,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D_VALID_RAM,
            other => self.ram[usize::from(other & INDEX_MASK)],
        }
    }
}

impl IoHandler for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if offset == 0 {
            self.index
        } else {
            self.register(self.index)
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if offset == 0 {
            self.index = value & INDEX_MASK;
        } else if self.index > REG_STATUS_D && self.index != REG_CENTURY {
            self.ram[usize::from(self.index)] = value;
        }
    }
}

fn bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

fn civil_time_now() -> CivilTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_time(secs)
}

/// Converts seconds since the Unix epoch to a UTC calendar date (Howard Hinnant's algorithm).
fn civil_time(secs: u64) -> CivilTime {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    CivilTime {
        year,
        month,
        day,
        weekday: ((days + 4) % 7 + 1) as u8, // 1970-01-01 was a Thursday
        hours: (rem / 3600) as u8,
        minutes: (rem / 60 % 60) as u8,
        seconds: (rem % 60) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_reg(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(0, &[index]);
        let mut data = [0];
        cmos.read(1, &mut data);
        data[0]
    }

    #[test]
    fn epoch_is_thursday_first_of_january_1970() {
        let t = civil_time(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 5));
    }

    #[test]
    fn leap_day_2024_converts_exactly() {
        // 2024-02-29 12:34:56 UTC
        let t = civil_time(1_709_210_096);
        assert_eq!((t.year, t.month, t.day), (2024, 2, 29));
        assert_eq!((t.hours, t.minutes, t.seconds), (12, 34, 56));
        assert_eq!(t.weekday, 5); // Thursday
    }

    #[test]
    fn status_registers_say_valid_and_not_updating() {
        let mut cmos = Cmos::new(128 << 20, 0);
        assert_eq!(read_reg(&mut cmos, REG_STATUS_A) & 0x80, 0);
        assert_eq!(read_reg(&mut cmos, REG_STATUS_B), STATUS_B_24H);
        assert_eq!(read_reg(&mut cmos, REG_STATUS_D), STATUS_D_VALID_RAM);
    }

    #[test]
    fn time_registers_are_bcd() {
        let mut cmos = Cmos::new(128 << 20, 0);
        let month = read_reg(&mut cmos, REG_MONTH);
        assert!((1..=0x12).contains(&month) && month & 0xf <= 9);
        assert_eq!(read_reg(&mut cmos, REG_CENTURY), 0x20);
    }

    #[test]
    fn memory_size_registers_count_64k_units_above_16m() {
        let mut cmos = Cmos::new(128 << 20, 1 << 30);
        let lo = u16::from(read_reg(&mut cmos, 0x34)) | u16::from(read_reg(&mut cmos, 0x35)) << 8;
        assert_eq!(lo, ((128 - 16) << 20 >> 16) as u16);
        assert_eq!(read_reg(&mut cmos, 0x5c), 0x40); // 1 GiB = 0x4000 units
    }

    #[test]
    fn nmi_disable_bit_is_ignored_in_index() {
        let mut cmos = Cmos::new(0, 0);
        cmos.write(0, &[0x80 | REG_STATUS_D]);
        let mut data = [0];
        cmos.read(1, &mut data);
        assert_eq!(data[0], STATUS_D_VALID_RAM);
    }
}
