#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ironvisor_virtio::fuzzing::console_queues(data);
});
