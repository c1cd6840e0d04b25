//! The Llama architecture on Burn: RMSNorm, rotary embeddings, grouped-query attention with a
//! KV cache, SwiGLU MLP and a tied or untied output head.
//!
//! Plain tensors rather than `burn::nn` modules, like the BERT encoder: weights always come
//! from a checkpoint, and the forward pass stays readable next to the Hugging Face code.
//! Projection weights are kept as `[in, out]` so each projection is one matmul. Hidden states
//! travel as `[rows, hidden]` (rows = batch x positions) and are reshaped only for attention.

use super::config::{LlamaConfig, RopePairing};
use super::cpu_matvec::QuantMatrix;
use super::host_decode::{HostDecoder, HostKv, HostLayer, RopePlan};
use super::lora::{LoraAdapters, Target};
use super::weights::{NamedTensor, WeightSource, hf_names, save_hf, tensor_values};
use anyhow::{Result, ensure};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::sync::Arc;

/// Decode steps with at most this many rows use the block kernels on CPU; longer inputs
/// (prefill, training) are compute-bound and go to Burn's matmul.
const BLOCK_KERNEL_ROWS: usize = 32;

/// A projection, `[in, out]`, with the checkpoint's quantized blocks when the CPU kernels can
/// read them.
#[derive(Clone)]
pub(crate) struct Projection<B: Backend> {
    pub(crate) weight: Tensor<B, 2>,
    pub(crate) blocks: Option<Arc<QuantMatrix>>,
}

impl<B: Backend> Projection<B> {
    fn forward(&self, x: Tensor<B, 2>, block_kernels: bool) -> Tensor<B, 2> {
        if block_kernels && let Some(blocks) = &self.blocks {
            let [rows, _] = x.dims();
            let device = x.device();
            let values: Vec<f32> = x.into_data().to_vec().expect("activations are f32");
            let out = blocks.matmul_transposed(&values, rows);
            return Tensor::from_data(TensorData::new(out, [rows, blocks.rows()]), &device);
        }
        x.matmul(self.weight.clone())
    }
}

#[derive(Clone)]
pub(crate) struct Block<B: Backend> {
    pub(crate) attention_norm: Tensor<B, 1>,
    pub(crate) q: Projection<B>,
    pub(crate) k: Projection<B>,
    pub(crate) v: Projection<B>,
    pub(crate) o: Projection<B>,
    pub(crate) mlp_norm: Tensor<B, 1>,
    pub(crate) gate: Projection<B>,
    pub(crate) up: Projection<B>,
    pub(crate) down: Projection<B>,
}

/// Keys and values of the positions seen so far, per layer.
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
}

/// One layer's keys and values: Burn tensors `[batch, kv_heads, seen, head_dim]`, or host
/// buffers once decode steps run on the host (appending to a tensor copies all of it).
enum LayerCache<B: Backend> {
    Empty,
    Tensors(Tensor<B, 4>, Tensor<B, 4>),
    Host(HostKv),
}

impl<B: Backend> KvCache<B> {
    pub fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| LayerCache::Empty).collect(),
        }
    }

    /// Positions held (0 before the first step).
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(LayerCache::Tensors(k, _)) => k.dims()[2],
            Some(LayerCache::Host(kv)) => kv.len,
            Some(LayerCache::Empty) | None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Backend> LayerCache<B> {
    /// The cache as tensors, for steps that attend with Burn ops.
    fn take_tensors(&mut self, device: &Device<B>) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        match std::mem::replace(self, Self::Empty) {
            Self::Empty => None,
            Self::Tensors(k, v) => Some((k, v)),
            Self::Host(kv) => Some(kv.to_tensors(device)),
        }
    }

    /// The cache as host buffers, for decode steps on the host.
    fn host(&mut self) -> &mut HostKv {
        if let Self::Tensors(k, v) = self {
            *self = Self::Host(HostKv::from_tensors(k.clone(), v.clone()));
        }
        match self {
            Self::Host(kv) => kv,
            _ => panic!("decode steps on the host follow a prefill"),
        }
    }
}

/// A Llama-family decoder with its weights on one device.
pub struct Llama<B: Backend> {
    pub config: LlamaConfig,
    pub(crate) embedding: Tensor<B, 2>,
    pub(crate) blocks: Vec<Block<B>>,
    pub(crate) final_norm: Tensor<B, 1>,
    /// `[hidden, vocab]`; the transposed embedding when tied.
    pub(crate) head: Projection<B>,
    /// Whether decode steps may use the CPU block kernels (the CPU backend, no autodiff).
    block_kernels: bool,
    /// Decode steps on host buffers, when every projection has quantized blocks or f32 rows
    /// (see `host_decode`); rebuilt by `merge`.
    host: Option<HostDecoder>,
    rope: Rope<B, 2>,
    device: Device<B>,
}

/// One forward step's inputs: `tokens` and `positions` are `[batch, len]` row-major; `mask_bias`
/// is added to attention scores, `[batch, 1, len, cached + len]` or one copy per head, `[batch,
/// heads, len, cached + len]` (0 to attend, a large negative or -inf not to).
pub struct StepInput<B: Backend> {
    pub tokens: Tensor<B, 2, Int>,
    pub positions: Tensor<B, 2, Int>,
    pub mask_bias: Tensor<B, 4>,
}

impl<B: Backend> Llama<B> {
    /// Builds the model from `source` (Hugging Face tensor names, `[out, in]` matrices).
    pub fn load(
        config: LlamaConfig,
        source: &dyn WeightSource,
        device: &Device<B>,
    ) -> Result<Self> {
        let h = config.hidden_size;
        let hd = config.head_dim();
        let q_out = config.num_attention_heads * hd;
        let kv_out = config.kv_heads() * hd;
        let inter = config.intermediate_size;
        let vector = |name: &str, len: usize| -> Result<Tensor<B, 1>> {
            let (values, shape) = source.tensor(name)?;
            ensure!(
                shape == [len],
                "{}: {name} has shape {shape:?}, expected [{len}]",
                source.describe()
            );
            Ok(Tensor::from_data(TensorData::new(values, [len]), device))
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Tensor<B, 2>> {
            let (values, shape) = source.tensor(name)?;
            ensure!(
                shape == [rows, cols],
                "{}: {name} has shape {shape:?}, expected [{rows}, {cols}]",
                source.describe()
            );
            Ok(Tensor::from_data(
                TensorData::new(values, [rows, cols]),
                device,
            ))
        };
        // The block kernels run on the CPU backend only; under autodiff or on a GPU every
        // projection stays a Burn matmul.
        let block_kernels = crate::backend::is_plain_cpu::<B>();
        let quantized =
            |name: &str, input: usize, output: usize| -> Result<Option<Arc<QuantMatrix>>> {
                if !block_kernels {
                    return Ok(None);
                }
                let Some((ggml_type, data, shape)) = source.blocks(name) else {
                    return Ok(None);
                };
                if shape != [output, input] {
                    return Ok(None);
                }
                Ok(QuantMatrix::from_blocks(ggml_type, data, output, input)?.map(Arc::new))
            };
        // Checkpoints store [out, in].
        let projection = |name: &str, input: usize, output: usize| -> Result<Projection<B>> {
            Ok(Projection {
                weight: matrix(name, output, input)?.transpose(),
                blocks: quantized(name, input, output)?,
            })
        };
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            let n = hf_names::Layer(layer);
            blocks.push(Block {
                attention_norm: vector(&n.attention_norm(), h)?,
                q: projection(&n.q(), h, q_out)?,
                k: projection(&n.k(), h, kv_out)?,
                v: projection(&n.v(), h, kv_out)?,
                o: projection(&n.o(), q_out, h)?,
                mlp_norm: vector(&n.mlp_norm(), h)?,
                gate: projection(&n.gate(), h, inter)?,
                up: projection(&n.up(), h, inter)?,
                down: projection(&n.down(), inter, h)?,
            });
        }
        let embedding = matrix(hf_names::EMBEDDING, config.vocab_size, h)?;
        let head = if config.tie_word_embeddings || !source.contains(hf_names::HEAD) {
            Projection {
                weight: embedding.clone().transpose(),
                blocks: quantized(hf_names::EMBEDDING, h, config.vocab_size)?,
            }
        } else {
            projection(hf_names::HEAD, h, config.vocab_size)?
        };
        let plan = RopePlan::new(&config);
        let rope = Rope::tables(&plan, config.max_position_embeddings, device);
        let final_norm = vector(hf_names::FINAL_NORM, h)?;
        let host = host_decoder(&config, &blocks, &final_norm, plan)?;
        Ok(Self {
            final_norm,
            embedding,
            blocks,
            head,
            block_kernels,
            host,
            rope,
            device: device.clone(),
            config,
        })
    }

    /// Whether decode steps run on host buffers (see `host_decode`).
    pub fn decodes_on_host(&self) -> bool {
        self.host.is_some()
    }

    pub fn device(&self) -> &Device<B> {
        &self.device
    }

    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.blocks.len())
    }

    /// Runs `input` through the decoder, extending `cache`; returns the final-normed hidden
    /// states `[batch * len, hidden]`.
    pub fn step(&self, input: StepInput<B>, cache: &mut KvCache<B>) -> Tensor<B, 2> {
        self.step_adapted(input, cache, None)
    }

    /// [`Llama::step`] with LoRA `adapters` added to their projections (unmerged: the base
    /// weights stay as they are, and under autodiff only the adapters get gradients).
    pub fn step_adapted(
        &self,
        input: StepInput<B>,
        cache: &mut KvCache<B>,
        adapters: Option<&LoraAdapters<B>>,
    ) -> Tensor<B, 2> {
        let [batch, len] = input.tokens.dims();
        let rows = batch * len;
        if len == 1
            && rows <= BLOCK_KERNEL_ROWS
            && adapters.is_none()
            && let Some(host) = &self.host
        {
            return self.host_step(host, input, cache);
        }
        let h = self.config.hidden_size;
        let hd = self.config.head_dim();
        let heads = self.config.num_attention_heads;
        let kv_heads = self.config.kv_heads();
        let group = heads / kv_heads;
        let eps = self.config.rms_norm_eps;

        let mut x = self
            .embedding
            .clone()
            .select(0, input.tokens.reshape([rows]));
        let positions = input.positions.reshape([rows]);
        let cos = self.rope.cos.clone().select(0, positions.clone());
        let sin = self.rope.sin.clone().select(0, positions);
        // The angles copied out for every head once per pass: multiplying by a table broadcast
        // over the head axis walks the values one by one on the CPU backend, and rope runs twice
        // per layer, forward and backward.
        let rope_for = |heads: usize| Rope {
            cos: cos.clone().unsqueeze_dim::<3>(1).repeat_dim(1, heads),
            sin: sin.clone().unsqueeze_dim::<3>(1).repeat_dim(1, heads),
            rotation: self.rope.rotation.clone(),
        };
        let (rope_q, rope_kv) = (rope_for(heads), rope_for(kv_heads));
        let scale = 1.0 / (hd as f64).sqrt();
        let fast = self.block_kernels && rows <= BLOCK_KERNEL_ROWS;

        for (layer, (block, cached)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate()
        {
            let adapters = adapters.map(|a| (&a.layers[layer], (a.scale, a.active_dropout())));
            // The base projection plus the target's adapter, when there is one.
            let project =
                |projection: &Projection<B>, target: Target, x: Tensor<B, 2>| match adapters
                    .and_then(|(layer, scale)| layer.get(target).map(|p| (p, scale)))
                {
                    Some((pair, (scale, dropout))) => {
                        projection.forward(x.clone(), fast) + pair.delta(x, scale, dropout)
                    }
                    None => projection.forward(x, fast),
                };
            let normed = rms_norm(x.clone(), &block.attention_norm, eps);
            let heads_of =
                |t: Tensor<B, 3>, n: usize| t.reshape([batch, len, n, hd]).swap_dims(1, 2);
            let split = |t: Tensor<B, 2>, n: usize| t.reshape([rows, n, hd]);
            let q = heads_of(
                rope_q.apply(split(project(&block.q, Target::Q, normed.clone()), heads)),
                heads,
            );
            let k = heads_of(
                rope_kv.apply(split(
                    project(&block.k, Target::K, normed.clone()),
                    kv_heads,
                )),
                kv_heads,
            );
            let v = heads_of(
                split(project(&block.v, Target::V, normed), kv_heads),
                kv_heads,
            );
            let (k, v) = match cached.take_tensors(&self.device) {
                Some((past_k, past_v)) => (
                    Tensor::cat(vec![past_k, k], 2),
                    Tensor::cat(vec![past_v, v], 2),
                ),
                None => (k, v),
            };
            *cached = LayerCache::Tensors(k.clone(), v.clone());
            let total = k.dims()[2];
            // Grouped-query attention without copying keys: the query heads that share a
            // key-value head are stacked along the position axis.
            let q = q.reshape([batch, kv_heads, group * len, hd]);
            let scores = q
                .matmul(k.swap_dims(2, 3))
                .mul_scalar(scale)
                .reshape([batch, heads, len, total])
                + input.mask_bias.clone();
            let attended = crate::nn::softmax_last(scores)
                .reshape([batch, kv_heads, group * len, total])
                .matmul(v)
                .reshape([batch, heads, len, hd])
                .swap_dims(1, 2)
                .reshape([rows, heads * hd]);
            x = x + project(&block.o, Target::O, attended);

            let normed = rms_norm(x.clone(), &block.mlp_norm, eps);
            let gated = silu(project(&block.gate, Target::Gate, normed.clone()))
                * project(&block.up, Target::Up, normed);
            x = x + project(&block.down, Target::Down, gated);
        }
        rms_norm(x, &self.final_norm, eps).reshape([rows, h])
    }

    /// A decode step (one position per row) on host buffers: the same result as the tensor
    /// path, without its per-operation overhead.
    fn host_step(
        &self,
        host: &HostDecoder,
        input: StepInput<B>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let [batch, _] = input.tokens.dims();
        let embedded = self
            .embedding
            .clone()
            .select(0, input.tokens.reshape([batch]));
        let read = |data: TensorData| -> Vec<f32> { data.to_vec().expect("activations are f32") };
        let positions: Vec<usize> = input
            .positions
            .into_data()
            .iter::<i64>()
            .map(|p| p as usize)
            .collect();
        let bias = read(input.mask_bias.into_data());
        let mut caches: Vec<&mut HostKv> = cache.layers.iter_mut().map(LayerCache::host).collect();
        let hidden = host.step(read(embedded.into_data()), &positions, &bias, &mut caches);
        Tensor::from_data(
            TensorData::new(hidden, [batch, self.config.hidden_size]),
            &self.device,
        )
    }

    /// Vocabulary logits `[rows, vocab]` for hidden states `[rows, hidden]`.
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let rows = hidden.dims()[0];
        self.head
            .forward(hidden, self.block_kernels && rows <= BLOCK_KERNEL_ROWS)
    }

    /// Logits `[batch, len, vocab]` of right-padded sequences in one pass without a cache
    /// (scoring and training); padding positions attend only to themselves and are garbage.
    pub fn forward(&self, sequences: &[Vec<u32>]) -> Result<Tensor<B, 3>> {
        self.forward_adapted(sequences, None)
    }

    /// [`Llama::forward`] with LoRA adapters (training, and checking merges).
    pub fn forward_adapted(
        &self,
        sequences: &[Vec<u32>],
        adapters: Option<&LoraAdapters<B>>,
    ) -> Result<Tensor<B, 3>> {
        let hidden = self.hidden_states(sequences, adapters)?;
        let (batch, len) = (sequences.len(), hidden.dims()[0] / sequences.len());
        Ok(self
            .logits(hidden)
            .reshape([batch, len, self.config.vocab_size]))
    }

    /// The final (normed) hidden states `[batch * len, hidden]` of right-padded sequences, row
    /// `b * len + p` for position `p` of sequence `b`: what [`Llama::logits`] turns into logits.
    /// Training takes the logits of the positions it scores only, which saves most of the
    /// vocabulary projection.
    pub fn hidden_states(
        &self,
        sequences: &[Vec<u32>],
        adapters: Option<&LoraAdapters<B>>,
    ) -> Result<Tensor<B, 2>> {
        let batch = sequences.len();
        let len = sequences.iter().map(Vec::len).max().unwrap_or(0);
        ensure!(
            batch > 0 && len > 0,
            "forward needs at least one non-empty sequence"
        );
        let mut tokens = Vec::with_capacity(batch * len);
        let mut lengths = Vec::with_capacity(batch);
        for sequence in sequences {
            tokens.extend(sequence.iter().map(|&t| t as i64));
            tokens.extend(std::iter::repeat_n(0, len - sequence.len()));
            lengths.push(sequence.len());
        }
        let positions: Vec<i64> = (0..batch).flat_map(|_| 0..len as i64).collect();
        let heads = self.config.num_attention_heads;
        let mask = causal_bias(&lengths, len, heads, &self.device);
        let input = StepInput {
            tokens: Tensor::from_data(TensorData::new(tokens, [batch, len]), &self.device),
            positions: Tensor::from_data(TensorData::new(positions, [batch, len]), &self.device),
            mask_bias: mask,
        };
        Ok(self.step_adapted(input, &mut self.new_cache(), adapters))
    }

    /// Adds `adapters` into the base weights for inference at base-model speed. The merged
    /// projections lose their quantized blocks (they no longer hold the merged values); on the
    /// CPU they keep f32 rows for the decode kernels instead.
    pub fn merge(&mut self, adapters: &LoraAdapters<B>) -> Result<()> {
        ensure!(
            adapters.layers.len() == self.blocks.len(),
            "adapters for {} layers do not fit a model of {}",
            adapters.layers.len(),
            self.blocks.len()
        );
        for (block, layer) in self.blocks.iter_mut().zip(&adapters.layers) {
            for target in Target::ALL {
                let Some(pair) = layer.get(target) else {
                    continue;
                };
                let projection = match target {
                    Target::Q => &mut block.q,
                    Target::K => &mut block.k,
                    Target::V => &mut block.v,
                    Target::O => &mut block.o,
                    Target::Gate => &mut block.gate,
                    Target::Up => &mut block.up,
                    Target::Down => &mut block.down,
                };
                let update = pair.a.val().matmul(pair.b.val()).mul_scalar(adapters.scale);
                projection.weight = projection.weight.clone() + update;
                projection.blocks = None;
                if self.block_kernels {
                    // Checkpoints' [out, in] layout, which the kernels read.
                    let (values, shape) = tensor_values(projection.weight.clone().transpose())?;
                    projection.blocks =
                        QuantMatrix::from_f32(values, shape[0], shape[1]).map(Arc::new);
                }
            }
        }
        let plan = RopePlan::new(&self.config);
        self.host = host_decoder(&self.config, &self.blocks, &self.final_norm, plan)?;
        Ok(())
    }

    /// Checks a token id against the vocabulary.
    pub fn check_token(&self, token: u32) -> Result<()> {
        ensure!(
            (token as usize) < self.config.vocab_size,
            "token id {token} is outside the vocabulary of {}",
            self.config.vocab_size
        );
        Ok(())
    }
}

/// Causal attention bias for right-padded rows of `lengths` within `len` positions, one copy
/// per head: a position attends to earlier real positions of its own row (padding only to
/// itself).
///
/// Built for every head because adding a bias broadcast over the head axis walks the scores
/// element by element on the CPU backend, once per layer, forward and backward; a same-shape
/// add is one vectorized pass. The masked value is -inf rather than `nn::MASKED`: every row keeps
/// its diagonal, so softmax never sees a row without a finite score, and `exp(-inf)` is an
/// early return where `exp(-1e9)` takes libm's underflow path.
fn causal_bias<B: Backend>(
    lengths: &[usize],
    len: usize,
    heads: usize,
    device: &Device<B>,
) -> Tensor<B, 4> {
    let mut one_head = vec![f32::NEG_INFINITY; len * len];
    let mut bias = Vec::with_capacity(lengths.len() * heads * len * len);
    for &length in lengths {
        one_head.fill(f32::NEG_INFINITY);
        for query in 0..len {
            for key in 0..=query {
                if key < length || key == query {
                    one_head[query * len + key] = 0.0;
                }
            }
        }
        for _ in 0..heads {
            bias.extend_from_slice(&one_head);
        }
    }
    Tensor::from_data(
        TensorData::new(bias, [lengths.len(), heads, len, len]),
        device,
    )
}

/// The host decode path for `blocks`, when every projection has quantized blocks.
fn host_decoder<B: Backend>(
    config: &LlamaConfig,
    blocks: &[Block<B>],
    final_norm: &Tensor<B, 1>,
    rope: RopePlan,
) -> Result<Option<HostDecoder>> {
    let quantized = |p: &Projection<B>| p.blocks.clone();
    let mut layers = Vec::with_capacity(blocks.len());
    for block in blocks {
        let (Some(q), Some(k), Some(v), Some(o), Some(gate), Some(up), Some(down)) = (
            quantized(&block.q),
            quantized(&block.k),
            quantized(&block.v),
            quantized(&block.o),
            quantized(&block.gate),
            quantized(&block.up),
            quantized(&block.down),
        ) else {
            return Ok(None);
        };
        layers.push(HostLayer {
            attention_norm: tensor_values(block.attention_norm.clone())?.0,
            q,
            k,
            v,
            o,
            mlp_norm: tensor_values(block.mlp_norm.clone())?.0,
            gate,
            up,
            down,
        });
    }
    Ok(Some(HostDecoder {
        layers,
        final_norm: tensor_values(final_norm.clone())?.0,
        rope,
        heads: config.num_attention_heads,
        eps: config.rms_norm_eps as f32,
    }))
}

fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let mean_square = x.clone().powf_scalar(2.0).mean_dim(1);
    x * (mean_square + eps).sqrt().recip() * weight.clone().unsqueeze::<2>()
}

/// Rotary embeddings as `x * cos + (x @ rotation) * sin`: `rotation` is the signed permutation
/// that pairs dimensions (Hugging Face's halves or Meta's neighbours) and `cos`/`sin` repeat each
/// pair's angle on both its dimensions. One formula, four tensor operations, for both pairings;
/// exact, since `rotation` has one ±1 per column.
#[derive(Clone)]
struct Rope<B: Backend, const D: usize> {
    /// `[max_positions, head_dim]` in the model; `[rows, heads, head_dim]` gathered for a step.
    cos: Tensor<B, D>,
    sin: Tensor<B, D>,
    /// `[head_dim, head_dim]`
    rotation: Tensor<B, 2>,
}

impl<B: Backend> Rope<B, 2> {
    fn tables(plan: &RopePlan, positions: usize, device: &Device<B>) -> Self {
        let hd = plan.head_dim;
        // cos/sin repeat each pair's angle on both its dimensions.
        let mut cos = vec![0f32; positions * hd];
        let mut sin = vec![0f32; positions * hd];
        for position in 0..positions {
            for (p, &(a, b)) in plan.pairs.iter().enumerate() {
                let angle = plan.angle(position, p);
                for d in [a, b] {
                    cos[position * hd + d] = angle.cos();
                    sin[position * hd + d] = angle.sin();
                }
            }
        }
        // (x @ rotation)[a] = -x[b], (x @ rotation)[b] = x[a].
        let mut rotation = vec![0f32; hd * hd];
        for &(a, b) in &plan.pairs {
            rotation[b * hd + a] = -1.0;
            rotation[a * hd + b] = 1.0;
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [positions, hd]), device),
            sin: Tensor::from_data(TensorData::new(sin, [positions, hd]), device),
            rotation: Tensor::from_data(TensorData::new(rotation, [hd, hd]), device),
        }
    }
}

impl<B: Backend> Rope<B, 3> {
    /// Rotates `x` `[rows, heads, head_dim]` (one position per row).
    fn apply(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [rows, heads, hd] = x.dims();
        let rotated = x
            .clone()
            .reshape([rows * heads, hd])
            .matmul(self.rotation.clone())
            .reshape([rows, heads, hd]);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// Reads a model's tensors back in Hugging Face naming and layout (`[out, in]`, half rope
/// pairing), for saving.
fn hf_tensors<B: Backend>(model: &Llama<B>) -> Result<Vec<NamedTensor>> {
    let read = tensor_values::<B, 2>;
    let vector = |t: &Tensor<B, 1>| tensor_values(t.clone());
    // Checkpoints store [out, in]; Q and K rows go back to Hugging Face's pairing.
    let projection = |p: &Projection<B>, heads: Option<usize>| -> Result<(Vec<f32>, Vec<usize>)> {
        let (values, shape) = read(p.weight.clone().transpose())?;
        match (heads, model.config.rope_pairing) {
            (Some(heads), RopePairing::Interleaved) => Ok((
                super::weights::permute_for_pairing(&values, heads, shape[1], true)?,
                shape,
            )),
            _ => Ok((values, shape)),
        }
    };
    let config = &model.config;
    let mut out = Vec::new();
    let mut push = |name: String, (values, shape): (Vec<f32>, Vec<usize>)| {
        out.push((name, values, shape));
    };
    push(hf_names::EMBEDDING.into(), read(model.embedding.clone())?);
    for (layer, block) in model.blocks.iter().enumerate() {
        let n = hf_names::Layer(layer);
        push(n.attention_norm(), vector(&block.attention_norm)?);
        push(
            n.q(),
            projection(&block.q, Some(config.num_attention_heads))?,
        );
        push(n.k(), projection(&block.k, Some(config.kv_heads()))?);
        push(n.v(), projection(&block.v, None)?);
        push(n.o(), projection(&block.o, None)?);
        push(n.mlp_norm(), vector(&block.mlp_norm)?);
        push(n.gate(), projection(&block.gate, None)?);
        push(n.up(), projection(&block.up, None)?);
        push(n.down(), projection(&block.down, None)?);
    }
    push(hf_names::FINAL_NORM.into(), vector(&model.final_norm)?);
    if !config.tie_word_embeddings {
        push(
            hf_names::HEAD.into(),
            read(model.head.weight.clone().transpose())?,
        );
    }
    Ok(out)
}

impl<B: Backend> Llama<B> {
    /// Writes the model as a Hugging Face checkpoint (`config.json` + F32 `model.safetensors`)
    /// that transformers and slim load; a GGUF-loaded model is converted back to Hugging Face's
    /// rope pairing.
    pub fn save_pretrained(&self, dir: &std::path::Path) -> Result<()> {
        let config = LlamaConfig {
            rope_pairing: RopePairing::Half,
            ..self.config.clone()
        };
        save_hf(dir, &config, &hf_tensors(self)?)
    }
}
