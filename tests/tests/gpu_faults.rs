//! GPU faults become errors, never panics or hangs: a buffer over the adapter's limit is refused
//! by name, a wgpu validation error surfaces at the next readback, and the device keeps working.

use creme_tests::gpu_on;

#[test]
fn a_buffer_over_the_limit_is_an_error_naming_it() {
    let gpu = gpu_on(None).expect("a GPU adapter (lavapipe)");
    let limit = gpu.limits.max_buffer_size;
    let _b = gpu.storage("kv cache of a much too long context", limit + 4);
    let err = gpu.check().unwrap_err().to_string();
    assert!(
        err.contains("kv cache of a much too long context") && err.contains(&limit.to_string()),
        "{err}"
    );
    // Cleared once reported; the device still works.
    gpu.check().unwrap();
    let x = gpu.upload("x", &[1.0f32, 2.0, 3.0]);
    assert_eq!(
        pollster::block_on(gpu.read::<f32>(&x, 3)).unwrap(),
        vec![1.0, 2.0, 3.0]
    );
}

#[test]
fn a_validation_error_surfaces_at_the_next_readback() {
    let gpu = gpu_on(None).expect("a GPU adapter (lavapipe)");
    let a = gpu.storage("a", 16);
    let b = gpu.storage("b", 16);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&a, 0, &b, 0, 64); // past the end of both
    gpu.queue.submit([enc.finish()]);
    let err = pollster::block_on(gpu.read::<f32>(&a, 4))
        .unwrap_err()
        .to_string();
    assert!(err.contains("GPU error"), "{err}");
    assert_eq!(
        pollster::block_on(gpu.read::<f32>(&a, 4)).unwrap(),
        vec![0.0; 4]
    );
}
