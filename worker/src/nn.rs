//! Building blocks on top of `burn::nn` that the CPU backend runs much faster than the
//! stock ones: inverted dropout with masks drawn on the host, GELU with a host `erf`, and
//! linear layers applied to every position of a sequence as one matrix product; and the
//! attention-bias value every model here uses for forbidden positions.
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
//! **GELU.** The CPU backend computes `erf` per element through libm, a quarter of the MiniLM
//! encoder's time; [`gelu`] computes it on the host there, with a rational approximation whose
//! error is far below f32 rounding of the activations that follow.
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

/// Added to an attention score where attention is forbidden (later or padded keys): far below
/// any real score, finite so that a row with every key forbidden still has a softmax, and
/// without NaN when added to itself.
pub const MASKED: f32 = -1e9;

/// Inverted-dropout factors for `n` elements: 0 with probability `probability`, else
/// `1 / (1 - probability)`.
///
/// The probability is resolved to 1/65,536 (four 16-bit draws per 64-bit number), far finer
/// than any dropout rate needs.
pub fn keep_factors(rng: &mut impl RngCore, n: usize, probability: f32) -> Vec<f32> {
    let probability = probability.clamp(0.0, 1.0);
    let threshold = (probability * 65_536.0).round() as u32;
    // Never read when everything is dropped.
    let kept = if probability < 1.0 {
        1.0 / (1.0 - probability)
    } else {
        0.0
    };
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
        let factors = MASKS.with(|rng| {
            keep_factors(
                &mut *rng.borrow_mut(),
                shape.num_elements(),
                self.prob as f32,
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

/// GELU in its exact form, `x * Φ(x)` with the normal CDF through `erf`, as BERT checkpoints
/// (`hidden_act = "gelu"`) define it. On the plain CPU backend it runs on the host; elsewhere
/// (a GPU, autodiff) it is Burn's.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if !crate::backend::is_plain_cpu::<B>() {
        return burn::tensor::activation::gelu(x);
    }
    use rayon::prelude::*;
    let device = x.device();
    let shape = x.shape();
    let mut values: Vec<f32> = x.into_data().into_vec().expect("f32 activations");
    values
        .par_chunks_mut(16 * 1024)
        .for_each(|chunk| chunk.iter_mut().for_each(|v| *v = gelu_exact(*v)));
    Tensor::from_data(TensorData::new(values, shape), &device)
}

/// `x * Φ(x)`. `Φ` comes from erfc by Abramowitz & Stegun 7.1.26 (absolute error below
/// 1.5e-7); working with erfc on the negative side keeps the small values there accurate.
fn gelu_exact(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    // erfc(|x| / sqrt 2)
    let tail = poly * (-z * z).exp();
    let cdf = if x >= 0.0 {
        1.0 - 0.5 * tail
    } else {
        0.5 * tail
    };
    x * cdf
}

/// Softmax over the last axis. On the CPU backend, plain or under autodiff, it is one parallel
/// pass on the host (and one for the gradient). Burn's softmax is five tensor operations (max,
/// subtract, exp, sum, divide), each a single-threaded pass with its own buffer, and under
/// autodiff about as many again backwards: over the `[heads, len, len]` attention scores of
/// every layer that was a large share of a LoRA training step. Elsewhere it is Burn's.
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    {
        use std::any::Any;
        // The autodiff CPU backend is one concrete type; recognise it without a trait bound
        // that every model's backend parameter would have to carry.
        let x: Box<dyn Any> = Box::new(x);
        let x = match x.downcast::<Tensor<burn::backend::Autodiff<burn::backend::Flex>, D>>() {
            Ok(x) => {
                let y: Box<dyn Any> = Box::new(host_softmax::tracked(*x));
                return *y.downcast().expect("B is the autodiff CPU backend");
            }
            Err(x) => *x.downcast::<Tensor<B, D>>().expect("the input's own type"),
        };
        if crate::backend::is_plain_cpu::<B>() {
            let (device, dims) = (x.device(), x.dims());
            let mut values: Vec<f32> = x.into_data().into_vec().expect("f32 activations");
            host_softmax::rows(&mut values, dims[D - 1]);
            return Tensor::from_data(TensorData::new(values, dims), &device);
        }
        burn::tensor::activation::softmax(x, D - 1)
    }
    #[cfg(not(feature = "flex"))]
    burn::tensor::activation::softmax(x, D - 1)
}

/// `values` replaced by their softmax: `exp(v - max) / sum`, the host kernel every softmax on
/// host buffers uses.
pub fn softmax_in_place(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        total += *v;
    }
    for v in values.iter_mut() {
        *v /= total;
    }
}

/// Softmax on host buffers, and as an operation of the autodiff CPU backend with its own
/// backward pass.
#[cfg(feature = "flex")]
mod host_softmax {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Tensor, TensorData, TensorPrimitive};
    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    /// Each row of `width` values replaced by its softmax.
    pub fn rows(values: &mut [f32], width: usize) {
        values
            .par_chunks_mut(width)
            .for_each(super::softmax_in_place);
    }

    /// The input gradient of softmax rows `y` for the output gradient `grad`, in place:
    /// `y * (grad - sum(grad * y))` per row.
    fn gradient_rows(y: &[f32], grad: &mut [f32], width: usize) {
        grad.par_chunks_mut(width)
            .zip(y.par_chunks(width))
            .for_each(|(grad, y)| {
                let along: f32 = grad.iter().zip(y).map(|(g, y)| g * y).sum();
                for (g, &y) in grad.iter_mut().zip(y) {
                    *g = y * (*g - along);
                }
            });
    }

    fn host<const D: usize>(t: FlexTensor) -> (Vec<f32>, [usize; D]) {
        let t = Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(t));
        let dims = t.dims();
        (t.into_data().into_vec().expect("f32 activations"), dims)
    }

    fn flex<const D: usize>(values: Vec<f32>, dims: [usize; D]) -> FlexTensor {
        Tensor::<Flex, D>::from_data(TensorData::new(values, dims), &Default::default())
            .into_primitive()
            .tensor()
    }

    /// The backward step; its state is the softmax output.
    #[derive(Debug)]
    struct SoftmaxBackward<const D: usize>;

    impl<const D: usize> Backward<Flex, 1> for SoftmaxBackward<D> {
        type State = FlexTensor;

        fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let y = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let (y, _) = host::<D>(y);
                let (mut grad, dims) = host::<D>(grad);
                gradient_rows(&y, &mut grad, dims[D - 1]);
                flex(grad, dims)
            });
        }
    }

    pub fn tracked<const D: usize>(x: Tensor<Autodiff<Flex>, D>) -> Tensor<Autodiff<Flex>, D> {
        let x = x.into_primitive().tensor();
        let (mut values, dims) = host::<D>(x.primitive.clone());
        rows(&mut values, dims[D - 1]);
        let y = flex(values, dims);
        let out = match SoftmaxBackward::<D>
            .prepare::<NoCheckpointing>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

/// A dot product in eight independent partial sums, so that it vectorizes.
#[inline(always)]
pub fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let (a8, a_tail) = a.as_chunks::<8>();
    let (b8, b_tail) = b.as_chunks::<8>();
    let mut lanes = [0f32; 8];
    for (a, b) in a8.iter().zip(b8) {
        for l in 0..8 {
            lanes[l] = if FMA {
                a[l].mul_add(b[l], lanes[l])
            } else {
                a[l] * b[l] + lanes[l]
            };
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(a, b)| a * b).sum();
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
        + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend as Cpu, Train, device};

    #[test]
    fn keeps_about_one_minus_p_and_scales_what_it_keeps() {
        let mut rng = SmallRng::seed_from_u64(3);
        let factors = keep_factors(&mut rng, 100_003, 0.2);
        assert_eq!(factors.len(), 100_003);
        assert!(factors.iter().all(|&f| f == 0.0 || f == 1.25));
        let dropped = factors.iter().filter(|&&f| f == 0.0).count() as f64 / 100_003.0;
        assert!((dropped - 0.2).abs() < 0.01, "dropped {dropped}");
        assert!(keep_factors(&mut rng, 50, 0.0).iter().all(|&f| f == 1.0));
        assert!(keep_factors(&mut rng, 50, 1.0).iter().all(|&f| f == 0.0));
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
    fn host_gelu_matches_burns_exact_gelu() {
        let xs: Vec<f32> = (-1200..=1200).map(|i| i as f32 / 100.0).collect();
        let n = xs.len();
        let input = Tensor::<Cpu, 1>::from_data(TensorData::new(xs.clone(), [n]), &device());
        let ours: Vec<f32> = gelu(input.clone()).into_data().to_vec().unwrap();
        let burns: Vec<f32> = burn::tensor::activation::gelu(input)
            .into_data()
            .to_vec()
            .unwrap();
        for ((x, a), b) in xs.iter().zip(&ours).zip(&burns) {
            assert!(
                (a - b).abs() <= 2e-6 * (1.0 + x.abs()),
                "gelu({x}): {a} vs {b}"
            );
        }
        // The autodiff backend takes Burn's own path, with the same values.
        let train = Tensor::<Train, 1>::from_data(TensorData::new(xs, [n]), &device());
        let trained: Vec<f32> = gelu(train).into_data().to_vec().unwrap();
        assert_eq!(trained, burns);
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
    #[test]
    fn host_softmax_and_its_gradient_match_burns() {
        use crate::backend::Train;
        let device = crate::backend::device();
        let dims = [2, 3, 5, 7];
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) / 3.0)
            .collect();
        let weights: Vec<f32> = (0..n).map(|i| ((i * 11 % 13) as f32 - 6.0) / 5.0).collect();
        let mut masked = values.clone();
        masked[3] = f32::NEG_INFINITY;
        for values in [values, masked] {
            let run = |fused: bool| {
                let x =
                    Tensor::<Train, 4>::from_data(TensorData::new(values.clone(), dims), &device)
                        .require_grad();
                let y = if fused {
                    softmax_last(x.clone())
                } else {
                    burn::tensor::activation::softmax(x.clone(), 3)
                };
                let w =
                    Tensor::<Train, 4>::from_data(TensorData::new(weights.clone(), dims), &device);
                let grads = (y.clone() * w).sum().backward();
                let read = |t: Tensor<crate::backend::Backend, 4>| -> Vec<f32> {
                    t.into_data().into_vec().unwrap()
                };
                (read(y.inner()), read(x.grad(&grads).unwrap()))
            };
            let ((y, grad), (y_ref, grad_ref)) = (run(true), run(false));
            for (a, b) in y.iter().zip(&y_ref).chain(grad.iter().zip(&grad_ref)) {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
            // The plain backend gives the same forward values.
            let plain = softmax_last(Tensor::<crate::backend::Backend, 4>::from_data(
                TensorData::new(values.clone(), dims),
                &device,
            ));
            let plain: Vec<f32> = plain.into_data().into_vec().unwrap();
            assert_eq!(plain, y);
        }
    }
}
