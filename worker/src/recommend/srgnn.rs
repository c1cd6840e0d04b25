//! SR-GNN (Wu et al., AAAI 2019) as RecBole builds it: a user's history becomes a session
//! graph (one node per distinct item, an edge for each consecutive pair), a gated graph
//! network updates the node vectors from their in- and out-neighbours, and a soft-attention
//! readout over the history, anchored on the last item, gives the user state.
//!
//! The other backbones give a state at every position from one pass, and training predicts
//! the next item at every position. A session graph is not causal: the graph of the whole
//! history would show position `t` the transitions after it, its own target among them. So
//! the state at position `t` is SR-GNN run on the graph of the prefix ending at `t`, built
//! exactly, one graph per prefix. This is what RecBole's prefix augmentation trains on,
//! computed in one batch; evaluation needs the last prefix only ([`SrGnn::forward`]'s
//! `last_only`).
//!
//! The graphs are integer bookkeeping and are built on the host ([`PrefixGraphs`]); the model
//! gathers node vectors from the item vectors it is given, so every item representation
//! (IDs, `+`, SLIM's fused items) works unchanged.

use super::data::{PAD, SeqBatch};
use crate::nn::linear_rows;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{sigmoid, tanh};
use serde::{Deserialize, Serialize};

/// SR-GNN's hyper-parameters (the node and state width is the model's `hidden`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SrGnnConfig {
    /// Propagation steps of the gated graph network (RecBole's `step`).
    pub steps: usize,
}

impl Default for SrGnnConfig {
    fn default() -> Self {
        Self { steps: 1 }
    }
}

/// One propagation step: messages along incoming and outgoing edges, then a GRU-style update
/// of every node (RecBole's `GNN.GNNCell`, with `h' = (1 - z) h + z n`).
#[derive(Module, Debug)]
pub struct GatedGraphCell<B: Backend> {
    edge_in: Linear<B>,
    edge_out: Linear<B>,
    /// Added after aggregation, so a node without in- (out-) edges still gets it.
    bias_in: Param<Tensor<B, 1>>,
    bias_out: Param<Tensor<B, 1>>,
    /// The two aggregated messages to the reset, update and candidate pre-activations.
    input: Linear<B>,
    /// The node's own vector to the same three.
    recurrent: Linear<B>,
}

impl<B: Backend> GatedGraphCell<B> {
    fn new(hidden: usize, init: &Initializer, device: &B::Device) -> Self {
        let linear = |from, to| {
            LinearConfig::new(from, to)
                .with_initializer(init.clone())
                .init(device)
        };
        let bias = || init.init([hidden], device);
        Self {
            edge_in: linear(hidden, hidden),
            edge_out: linear(hidden, hidden),
            bias_in: bias(),
            bias_out: bias(),
            input: linear(2 * hidden, 3 * hidden),
            recurrent: linear(hidden, 3 * hidden),
        }
    }

    /// Node vectors `[graphs, nodes, hidden]` after one step over the normalised adjacency
    /// matrices `[graphs, nodes, nodes]`.
    fn forward(&self, a_in: Tensor<B, 3>, a_out: Tensor<B, 3>, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let [graphs, nodes, hidden] = h.dims();
        let bias = |b: &Param<Tensor<B, 1>>| b.val().reshape([1, 1, hidden]);
        let from_in = a_in.matmul(linear_rows(&self.edge_in, h.clone())) + bias(&self.bias_in);
        let from_out = a_out.matmul(linear_rows(&self.edge_out, h.clone())) + bias(&self.bias_out);
        let gi = linear_rows(&self.input, Tensor::cat(vec![from_in, from_out], 2));
        let gh = linear_rows(&self.recurrent, h.clone());
        let part = |m: Tensor<B, 3>, i: usize| {
            m.slice([0..graphs, 0..nodes, i * hidden..(i + 1) * hidden])
        };
        let reset = sigmoid(part(gi.clone(), 0) + part(gh.clone(), 0));
        let update = sigmoid(part(gi.clone(), 1) + part(gh.clone(), 1));
        let candidate = tanh(part(gi, 2) + reset * part(gh, 2));
        h.clone() + (candidate - h) * update
    }
}

/// The SR-GNN sequence encoder (item vectors come from the caller).
#[derive(Module, Debug)]
pub struct SrGnn<B: Backend> {
    cells: Vec<GatedGraphCell<B>>,
    /// Attention readout: `alpha_k = w3 . sigmoid(W1 h_last + W2 h_k)`.
    attend_last: Linear<B>,
    attend_each: Linear<B>,
    attend_score: Linear<B>,
    /// `[sum_k alpha_k h_k ; h_last]` to the user state.
    transform: Linear<B>,
}

impl<B: Backend> SrGnn<B> {
    pub(crate) fn new(config: &SrGnnConfig, hidden: usize, device: &B::Device) -> Self {
        // RecBole draws every SR-GNN parameter from U(-1/sqrt(d), 1/sqrt(d)).
        let bound = 1.0 / (hidden as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        let linear = |from, to, bias| {
            LinearConfig::new(from, to)
                .with_bias(bias)
                .with_initializer(init.clone())
                .init(device)
        };
        Self {
            cells: (0..config.steps)
                .map(|_| GatedGraphCell::new(hidden, &init, device))
                .collect(),
            attend_last: linear(hidden, hidden, true),
            attend_each: linear(hidden, hidden, true),
            attend_score: linear(hidden, 1, false),
            transform: linear(2 * hidden, hidden, true),
        }
    }

    /// User states `[batch, len, hidden]` from item vectors `[batch, len, hidden]`: at each
    /// position, SR-GNN over the prefix that ends there; zero at padded positions. With
    /// `last_only`, only the last position's state is computed: `[batch, 1, hidden]`.
    pub fn forward(
        &self,
        items: Tensor<B, 3>,
        input: &SeqBatch<B>,
        last_only: bool,
    ) -> Tensor<B, 3> {
        let [batch, len, hidden] = items.dims();
        let device = items.device();
        let tokens: Vec<i64> = input.items.clone().into_data().iter::<i64>().collect();
        let graphs = PrefixGraphs::new(&tokens, batch, len, last_only);
        let out_len = graphs.out_len;
        if graphs.prefixes == 0 {
            return Tensor::zeros([batch, out_len, hidden], &device);
        }
        let (p, n, w) = (graphs.prefixes, graphs.nodes, graphs.window);
        let index = |rows: Vec<i64>| {
            let count = rows.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [count]), &device)
        };
        let matrix = |values: Vec<f32>| {
            Tensor::<B, 3>::from_data(TensorData::new(values, [p, n, n]), &device)
        };

        let mut h = items
            .reshape([batch * len, hidden])
            .select(0, index(graphs.node_rows))
            .reshape([p, n, hidden]);
        let (a_in, a_out) = (matrix(graphs.a_in), matrix(graphs.a_out));
        for cell in &self.cells {
            h = cell.forward(a_in.clone(), a_out.clone(), h);
        }
        let nodes = h.reshape([p * n, hidden]);
        let history = nodes
            .clone()
            .select(0, index(graphs.history))
            .reshape([p, w, hidden]);
        let last = nodes.select(0, index(graphs.last));
        let alpha = linear_rows(
            &self.attend_score,
            sigmoid(
                self.attend_last.forward(last.clone()).unsqueeze_dim::<3>(1)
                    + linear_rows(&self.attend_each, history.clone()),
            ),
        );
        let in_history =
            Tensor::<B, 3>::from_data(TensorData::new(graphs.history_mask, [p, w, 1]), &device);
        let pooled = (alpha * in_history * history)
            .sum_dim(1)
            .reshape([p, hidden]);
        let states = self.transform.forward(Tensor::cat(vec![pooled, last], 1));
        // Row `p` is the zero state of padded positions.
        Tensor::cat(vec![states, Tensor::zeros([1, hidden], &device)], 0)
            .select(0, index(graphs.out_rows))
            .reshape([batch, out_len, hidden])
    }
}

/// The session graphs of a batch's prefixes, laid out for batched tensor work. Prefix `p`
/// has up to `nodes` nodes (its distinct items, in order of first appearance) and up to
/// `window` positions; shorter ones are padded with rows that nothing reads.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixGraphs {
    /// Prefixes in the batch (one per non-padded position, or per user with `last_only`).
    pub prefixes: usize,
    /// Nodes per graph, padded.
    pub nodes: usize,
    /// Positions per prefix, padded.
    pub window: usize,
    /// Positions per user in the output (`len`, or 1 with `last_only`).
    pub out_len: usize,
    /// For each graph's node, the row of its first occurrence in the `[batch * len]` item
    /// vectors `[prefixes * nodes]`.
    pub node_rows: Vec<i64>,
    /// `a_in[p][v][u] = [u -> v] / in_degree(v)`, `[prefixes * nodes * nodes]`.
    pub a_in: Vec<f32>,
    /// `a_out[p][u][v] = [u -> v] / out_degree(u)`, `[prefixes * nodes * nodes]`.
    pub a_out: Vec<f32>,
    /// For each position of each prefix, its node's row in `[prefixes * nodes]`
    /// `[prefixes * window]`.
    pub history: Vec<i64>,
    /// 1 where `history` is a real position, 0 where it pads `[prefixes * window]`.
    pub history_mask: Vec<f32>,
    /// The node row of each prefix's last item `[prefixes]`.
    pub last: Vec<i64>,
    /// For each output position, its prefix, or `prefixes` (a zero row) where the position
    /// is padding `[batch * out_len]`.
    pub out_rows: Vec<i64>,
}

impl PrefixGraphs {
    /// Graphs for `tokens` `[batch, len]`, left-padded with [`PAD`]: one per non-padded
    /// position, or one per user (its whole history) with `last_only`. Edges are binary as
    /// in RecBole: a pair repeated in a history counts once.
    pub fn new(tokens: &[i64], batch: usize, len: usize, last_only: bool) -> Self {
        let pad = i64::from(PAD);
        // (user, end position) of each prefix; a prefix starts at the user's first item.
        let mut ends = Vec::new();
        let mut starts = Vec::with_capacity(batch);
        for b in 0..batch {
            let row = &tokens[b * len..(b + 1) * len];
            let start = row.iter().position(|&t| t != pad).unwrap_or(len);
            starts.push(start);
            if start == len {
                continue;
            }
            let first_end = if last_only { len - 1 } else { start };
            ends.extend((first_end..len).map(|end| (b, end)));
        }
        let window = ends
            .iter()
            .map(|&(b, end)| end + 1 - starts[b])
            .max()
            .unwrap_or(0);
        let prefixes = ends.len();
        let out_len = if last_only { 1 } else { len };
        let mut out_rows = vec![prefixes as i64; batch * out_len];

        // Distinct items per prefix, found as the prefix grows would be cheaper, but padded
        // layouts need the largest count first; histories are short, so count directly.
        let mut distinct = Vec::with_capacity(prefixes);
        for &(b, end) in &ends {
            let row = &tokens[b * len + starts[b]..=b * len + end];
            let mut seen: Vec<i64> = Vec::new();
            for &t in row {
                if !seen.contains(&t) {
                    seen.push(t);
                }
            }
            distinct.push(seen);
        }
        let nodes = distinct.iter().map(Vec::len).max().unwrap_or(0);

        let mut graphs = Self {
            prefixes,
            nodes,
            window,
            out_len,
            node_rows: vec![0; prefixes * nodes],
            a_in: vec![0.0; prefixes * nodes * nodes],
            a_out: vec![0.0; prefixes * nodes * nodes],
            history: vec![0; prefixes * window],
            history_mask: vec![0.0; prefixes * window],
            last: vec![0; prefixes],
            out_rows: Vec::new(),
        };
        for (p, (&(b, end), items)) in ends.iter().zip(&distinct).enumerate() {
            let start = starts[b];
            let node_of = |t: i64| items.iter().position(|&i| i == t).expect("a prefix item");
            let nodes_base = p * nodes;
            let mut path = Vec::with_capacity(end + 1 - start);
            for pos in start..=end {
                let node = node_of(tokens[b * len + pos]);
                if !path.contains(&node) {
                    graphs.node_rows[nodes_base + node] = (b * len + pos) as i64;
                }
                graphs.history[p * window + path.len()] = (nodes_base + node) as i64;
                graphs.history_mask[p * window + path.len()] = 1.0;
                path.push(node);
            }
            graphs.last[p] = (nodes_base + *path.last().expect("a prefix is never empty")) as i64;

            let mut edge = vec![false; nodes * nodes];
            for pair in path.windows(2) {
                edge[pair[0] * nodes + pair[1]] = true;
            }
            let matrix = p * nodes * nodes;
            for u in 0..nodes {
                let out_degree = (0..nodes).filter(|&v| edge[u * nodes + v]).count();
                let in_degree = (0..nodes).filter(|&v| edge[v * nodes + u]).count();
                for v in 0..nodes {
                    if edge[u * nodes + v] {
                        graphs.a_out[matrix + u * nodes + v] = 1.0 / out_degree as f32;
                    }
                    if edge[v * nodes + u] {
                        graphs.a_in[matrix + u * nodes + v] = 1.0 / in_degree as f32;
                    }
                }
            }
            let out_pos = if last_only { 0 } else { end };
            out_rows[b * out_len + out_pos] = p as i64;
        }
        graphs.out_rows = out_rows;
        graphs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row `r` of a `[nodes, nodes]` block of prefix `p`.
    fn row(values: &[f32], graphs: &PrefixGraphs, p: usize, r: usize) -> Vec<f32> {
        let n = graphs.nodes;
        values[(p * n + r) * n..(p * n + r + 1) * n].to_vec()
    }

    #[test]
    fn the_papers_session_graph() {
        // SR-GNN's Figure 1 session v1, v2, v3, v2, v4 (tokens 1, 2, 3, 2, 4) after one pad.
        let tokens = [0, 1, 2, 3, 2, 4];
        let g = PrefixGraphs::new(&tokens, 1, 6, true);
        assert_eq!((g.prefixes, g.nodes, g.window, g.out_len), (1, 4, 5, 1));
        // Nodes in order of first appearance, gathered from their first positions.
        assert_eq!(g.node_rows, vec![1, 2, 3, 5]);
        // Outgoing: v2 -> v3 and v2 -> v4 share v2's out-degree.
        assert_eq!(row(&g.a_out, &g, 0, 0), vec![0.0, 1.0, 0.0, 0.0]);
        assert_eq!(row(&g.a_out, &g, 0, 1), vec![0.0, 0.0, 0.5, 0.5]);
        assert_eq!(row(&g.a_out, &g, 0, 2), vec![0.0, 1.0, 0.0, 0.0]);
        assert_eq!(row(&g.a_out, &g, 0, 3), vec![0.0; 4]);
        // Incoming: v2 is reached from v1 and v3.
        assert_eq!(row(&g.a_in, &g, 0, 0), vec![0.0; 4]);
        assert_eq!(row(&g.a_in, &g, 0, 1), vec![0.5, 0.0, 0.5, 0.0]);
        assert_eq!(row(&g.a_in, &g, 0, 2), vec![0.0, 1.0, 0.0, 0.0]);
        assert_eq!(row(&g.a_in, &g, 0, 3), vec![0.0, 1.0, 0.0, 0.0]);
        // The history reads nodes 0, 1, 2, 1, 3; the last item is v4.
        assert_eq!(g.history, vec![0, 1, 2, 1, 3]);
        assert_eq!(g.history_mask, vec![1.0; 5]);
        assert_eq!(g.last, vec![3]);
        assert_eq!(g.out_rows, vec![0]);
    }

    #[test]
    fn every_position_gets_the_graph_of_its_own_prefix() {
        // User 0: 5, 6, 5 (one pad); user 1: only padding; user 2: 7, 8, 9, 8.
        let tokens = [0, 5, 6, 5, 0, 0, 0, 0, 7, 8, 9, 8];
        let g = PrefixGraphs::new(&tokens, 3, 4, false);
        assert_eq!((g.prefixes, g.nodes, g.window, g.out_len), (7, 3, 4, 4));
        let none = g.prefixes as i64;
        assert_eq!(
            g.out_rows,
            vec![none, 0, 1, 2, none, none, none, none, 3, 4, 5, 6]
        );
        // The prefix 5, 6 knows nothing of the return to 5 after it.
        assert_eq!(row(&g.a_out, &g, 1, 1), vec![0.0; 3]);
        assert_eq!(row(&g.a_out, &g, 2, 1), vec![1.0, 0.0, 0.0]);
        // A one-item prefix has one node and no edges; its history is that item alone.
        assert_eq!(g.a_in[..9], [0.0; 9]);
        assert_eq!(g.history[..4], [0, 0, 0, 0]);
        assert_eq!(g.history_mask[..4], [1.0, 0.0, 0.0, 0.0]);
        // User 2's last prefix: nodes 7, 8, 9 read from rows 8, 9, 10; its last item is 8.
        assert_eq!(g.node_rows[6 * 3..], [8, 9, 10]);
        assert_eq!(g.last[6], 6 * 3 + 1);
    }

    #[test]
    fn a_batch_of_padding_has_no_graphs() {
        let g = PrefixGraphs::new(&[0, 0, 0], 1, 3, false);
        assert_eq!((g.prefixes, g.nodes, g.window), (0, 0, 0));
        assert_eq!(g.out_rows, vec![0, 0, 0]);
    }
}
