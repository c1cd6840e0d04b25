//! The Burn backend this binary was built with.

#[cfg(feature = "cuda")]
mod selected {
    /// GPU backend: CUDA through cubecl.
    pub type Backend = burn::backend::Cuda;
    pub const NAME: &str = "cuda";
}

#[cfg(all(feature = "flex", not(feature = "cuda")))]
mod selected {
    /// CPU backend.
    pub type Backend = burn::backend::Flex;
    pub const NAME: &str = "flex (CPU)";
}

#[cfg(not(any(feature = "flex", feature = "cuda")))]
compile_error!("slim-worker needs a backend: enable the `flex` (CPU) or `cuda` feature");

pub use selected::{Backend, NAME};

/// The selected backend with automatic differentiation, for training (LoRA adapters).
pub type Train = burn::backend::Autodiff<Backend>;

/// The default device of the selected backend.
pub fn device() -> burn::tensor::Device<Backend> {
    Default::default()
}

/// Whether `B` is the plain CPU backend (not under autodiff, not a GPU): the case where host
/// kernels may read and write tensor data directly instead of going through Burn's ops.
pub fn is_plain_cpu<B: burn::tensor::backend::Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn::backend::Flex>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

/// Keeps freed buffers in the heap for reuse; call once at start-up, before other threads.
///
/// Burn's CPU backend allocates a new buffer for nearly every tensor operation. glibc serves
/// buffers above its mmap threshold (128 KiB at first) with fresh mappings and unmaps them on
/// free, so the next operation's buffer arrives as new zeroed pages: page faults took about 15%
/// of a LoRA training step. Raising the threshold to glibc's maximum (32 MiB) and not trimming
/// the heap makes freed buffers reusable. One arena: the heaps of per-thread arenas are unmapped
/// whenever they empty, whatever the trim threshold, and the tensor work runs on a runtime
/// thread, not the main one. Peak memory stays what the largest step needs.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // -1: never give the top of the heap back.
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tensor;

    #[test]
    fn the_selected_backend_computes() {
        let device = device();
        let a = Tensor::<Backend, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
        let b = Tensor::<Backend, 2>::from_floats([[1.0], [1.0]], &device);
        let product: Vec<f32> = a.matmul(b).into_data().to_vec().unwrap();
        assert_eq!(product, vec![3.0, 7.0]);
    }
}
