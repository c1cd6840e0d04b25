//! Building blocks on top of `burn::nn` that the CPU backend runs much faster than the
//! stock ones: inverted dropout with masks drawn on the host, and linear layers applied to
//! every position of a sequence as one matrix product.
//!
//! **Dropout.** Burn's `nn::Dropout` draws its mask through the backend's random tensor, which
//! on the CPU backend builds a distribution sampler per element and takes one 64-bit ChaCha
//! draw each, then multiplies twice (by the mask, then by `1 / keep`). In SASRec training that
//! was about a tenth of every step. Here one 64-bit draw of a small fast generator decides four
//! elements, and the mask already holds `1 / keep`, so applying it is one multiplication.
//! [`Dropout`] is active only when the backend records gradients (training), with masks from a
//! per-thread generator that the training loop seeds ([`seed_dropout`]), so two models training
//! on different threads never share a stream.
//!
//! **Linear layers over sequences.** `Linear::forward` on `[batch, len, in]` is a batched
//! matrix product against the broadcast weight: one small product per sequence, and in the
//! backward pass one weight gradient per sequence summed afterwards. [`linear_rows`] folds the
//! sequences into rows first, so each direction is a single product.

use burn::module::Module;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::cell::RefCell;

/// Keep factors for `n` elements: 0 with probability `probability`, else `kept`.
///
/// The probability is resolved to 1/65,536 (four 16-bit draws per 64-bit number), far finer
/// than any dropout rate needs.
pub fn keep_factors(rng: &mut impl RngCore, n: usize, probability: f32, kept: f32) -> Vec<f32> {
    let threshold = (probability.clamp(0.0, 1.0) * 65_536.0).round() as u32;
    let mut factors = Vec::with_capacity(n);
    while factors.len() < n {
        let bits = rng.next_u64();
        for lane in 0..4.min(n - factors.len()) {
            let draw = ((bits >> (16 * lane)) & 0xffff) as u32;
            factors.push(if draw < threshold { 0.0 } else { kept });
        }
    }
    factors
}

thread_local! {
    /// This thread's mask generator; unseeded threads start from a fixed seed.
    static MASKS: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64(0));
}

/// Seeds this thread's dropout masks (the training loop calls it with the run's seed).
pub fn seed_dropout(seed: u64) {
    MASKS.with(|rng| *rng.borrow_mut() = SmallRng::seed_from_u64(seed));
}

/// Zeroes each element with probability `prob` and scales the rest by `1 / (1 - prob)` while
/// training; the identity in evaluation (a backend without autodiff) or when `prob` is 0.
#[derive(Module, Clone, Debug)]
pub struct Dropout {
    pub prob: f64,
}

impl Dropout {
    pub fn new(prob: f64) -> Self {
        assert!(
            (0.0..=1.0).contains(&prob),
            "dropout probability {prob} is not within [0, 1]"
        );
        Self { prob }
    }

    pub fn forward<B: Backend, const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        let device = input.device();
        if !B::ad_enabled(&device) || self.prob == 0.0 {
            return input;
        }
        let shape = input.shape();
        let kept = if self.prob < 1.0 {
            (1.0 / (1.0 - self.prob)) as f32
        } else {
            0.0
        };
        let factors = MASKS.with(|rng| {
            keep_factors(
                &mut *rng.borrow_mut(),
                shape.num_elements(),
                self.prob as f32,
                kept,
            )
        });
        input * Tensor::from_data(TensorData::new(factors, shape), &device)
    }
}

/// `linear` applied to every position of `x` `[batch, len, in]`, as one matrix product.
pub fn linear_rows<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, len, width] = x.dims();
    let y = linear.forward(x.reshape([batch * len, width]));
    let out = y.dims()[1];
    y.reshape([batch, len, out])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend as Cpu, Train, device};

    #[test]
    fn keeps_about_one_minus_p_and_scales_what_it_keeps() {
        let mut rng = SmallRng::seed_from_u64(3);
        let factors = keep_factors(&mut rng, 100_003, 0.2, 1.25);
        assert_eq!(factors.len(), 100_003);
        assert!(factors.iter().all(|&f| f == 0.0 || f == 1.25));
        let dropped = factors.iter().filter(|&&f| f == 0.0).count() as f64 / 100_003.0;
        assert!((dropped - 0.2).abs() < 0.01, "dropped {dropped}");
        assert!(
            keep_factors(&mut rng, 50, 0.0, 1.0)
                .iter()
                .all(|&f| f == 1.0)
        );
        assert!(
            keep_factors(&mut rng, 50, 1.0, 1.0)
                .iter()
                .all(|&f| f == 0.0)
        );
    }

    #[test]
    fn seeded_masks_repeat_and_evaluation_is_the_identity() {
        let dropout = Dropout::new(0.5);
        let ones = || Tensor::<Train, 2>::ones([8, 16], &device());
        let draw = || -> Vec<f32> { dropout.forward(ones()).into_data().to_vec().unwrap() };
        seed_dropout(7);
        let first = draw();
        let second = draw();
        seed_dropout(7);
        assert_eq!(draw(), first, "the same seed gives the same masks");
        assert_ne!(first, second, "consecutive masks differ");
        assert!(first.iter().all(|&v| v == 0.0 || v == 2.0));
        let plain = Tensor::<Cpu, 2>::ones([8, 16], &device());
        let out: Vec<f32> = dropout.forward(plain).into_data().to_vec().unwrap();
        assert!(out.iter().all(|&v| v == 1.0), "no dropout without autodiff");
    }

    #[test]
    fn linear_rows_matches_the_batched_forward() {
        let linear = burn::nn::LinearConfig::new(6, 4).init::<Cpu>(&device());
        let x = Tensor::<Cpu, 3>::random([3, 5, 6], burn::tensor::Distribution::Default, &device());
        let rows: Vec<f32> = linear_rows(&linear, x.clone())
            .into_data()
            .to_vec()
            .unwrap();
        let batched: Vec<f32> = linear.forward(x).into_data().to_vec().unwrap();
        assert_eq!(rows.len(), 3 * 5 * 4);
        for (a, b) in rows.iter().zip(&batched) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
