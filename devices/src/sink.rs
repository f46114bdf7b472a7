//! A port that accepts writes and reads back a fixed value (port 0x80 POST codes and the like).

use address_space::IoHandler;

/// Ignores writes; reads return `read_value` in every byte.
#[derive(Debug, Clone, Copy)]
pub struct Sink {
    read_value: u8,
}

impl Sink {
    /// A sink whose reads return `read_value`.
    pub fn new(read_value: u8) -> Self {
        Self { read_value }
    }
}

impl IoHandler for Sink {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.read_value);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_reads_back_its_value_and_swallows_writes() {
        let mut sink = Sink::new(0);
        sink.write(0, &[0x55]);
        let mut data = [0xaa; 2];
        sink.read(0, &mut data);
        assert_eq!(data, [0, 0]);
    }
}
