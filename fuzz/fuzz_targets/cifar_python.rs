#![no_main]
// Thin target: the harness (and its invariants) is lml_tools::fuzz::cifar_python.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lml_tools::fuzz::cifar_python(data);
});
