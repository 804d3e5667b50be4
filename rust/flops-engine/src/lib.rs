//! The FLOPs accounting engine: prices a trace of executed operations (see [`catalogue`] for
//! the price list and its conventions) and aggregates it by phase (forward, backward,
//! optimizer), by category (matmul, attention, BK-Core, ...) and by component (the module path
//! the op ran in). Unknown operations are listed by name and count, never priced at zero.

pub mod catalogue;

pub use catalogue::{optimizer_cost, price, Op, BK_BACKWARD_PER_ELEMENT, BK_FORWARD_PER_ELEMENT};
use std::collections::BTreeMap;

/// Where in a training step an op ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Forward,
    Backward,
    Optimizer,
}

impl Phase {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "forward" => Some(Self::Forward),
            "backward" => Some(Self::Backward),
            "optimizer" => Some(Self::Optimizer),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Backward => "backward",
            Self::Optimizer => "optimizer",
        }
    }
}

/// What kind of work an op's FLOPs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    Matmul,
    Attention,
    BkCore,
    Elementwise,
    Normalization,
    Softmax,
    Loss,
    Embedding,
    Reduction,
    Routing,
    Optimizer,
    DataMovement,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Self::Matmul => "matmul",
            Self::Attention => "attention",
            Self::BkCore => "bk_core",
            Self::Elementwise => "elementwise",
            Self::Normalization => "normalization",
            Self::Softmax => "softmax",
            Self::Loss => "loss",
            Self::Embedding => "embedding",
            Self::Reduction => "reduction",
            Self::Routing => "routing",
            Self::Optimizer => "optimizer",
            Self::DataMovement => "data_movement",
        }
    }
}

/// One traced op with where it ran and how many times (identical ops may be merged).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub op: Op,
    pub phase: Phase,
    pub component: String,
    pub count: u64,
}

/// Totals of a priced trace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub total: u64,
    pub by_phase: BTreeMap<&'static str, u64>,
    pub by_category: BTreeMap<&'static str, u64>,
    /// component -> phase -> FLOPs
    pub by_component: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// op name -> FLOPs (known ops only)
    pub by_op: BTreeMap<String, u64>,
    /// op name -> number of calls that could not be priced
    pub unknown: BTreeMap<String, u64>,
}

/// Prices every record and adds it up.
pub fn aggregate(records: &[Record]) -> Report {
    let mut report = Report::default();
    for phase in [Phase::Forward, Phase::Backward, Phase::Optimizer] {
        report.by_phase.insert(phase.name(), 0);
    }
    for r in records {
        match price(&r.op) {
            None => *report.unknown.entry(r.op.name.clone()).or_default() += r.count,
            Some(parts) => {
                let flops: u64 = parts.iter().map(|(_, f)| f).sum::<u64>() * r.count;
                for (category, f) in parts {
                    *report.by_category.entry(category.name()).or_default() += f * r.count;
                }
                report.total += flops;
                *report.by_phase.entry(r.phase.name()).or_default() += flops;
                *report.by_component.entry(r.component.clone()).or_default().entry(r.phase.name()).or_default() += flops;
                *report.by_op.entry(r.op.name.clone()).or_default() += flops;
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, inputs: Vec<Vec<usize>>, outputs: Vec<Vec<usize>>) -> Op {
        Op { name: name.into(), inputs, outputs, complex: false, detail: String::new() }
    }

    fn rec(o: Op, phase: Phase, component: &str) -> Record {
        Record { op: o, phase, component: component.into(), count: 1 }
    }

    #[test]
    fn matmul_family_uses_two_mnk() {
        let p = price(&op("aten.mm", vec![vec![3, 4], vec![4, 5]], vec![vec![3, 5]])).unwrap();
        assert_eq!(p, vec![(Category::Matmul, 2 * 3 * 4 * 5)]);
        let p = price(&op("aten.addmm", vec![vec![5], vec![3, 4], vec![4, 5]], vec![vec![3, 5]])).unwrap();
        assert_eq!(p, vec![(Category::Matmul, 120), (Category::Elementwise, 15)]);
        let p = price(&op("aten.bmm", vec![vec![2, 3, 4], vec![2, 4, 5]], vec![vec![2, 3, 5]])).unwrap();
        assert_eq!(p, vec![(Category::Matmul, 240)]);
        assert!(price(&op("aten.mm", vec![vec![3, 4], vec![5, 5]], vec![])).is_none(), "mismatched shapes");
    }

    #[test]
    fn scatter_add_costs_one_add_per_source_element() {
        let p = price(&op("aten.scatter_add_", vec![vec![100, 8], vec![1, 8], vec![1, 8]], vec![vec![100, 8]])).unwrap();
        assert_eq!(p, vec![(Category::Elementwise, 8)]);
    }

    #[test]
    fn the_methods_training_aids_are_priced_per_element() {
        let cases = [("aten.softplus", 3), ("aten.softplus_backward", 5), ("aten.mse_loss", 3), ("aten.round", 1),
                     ("aten._fused_moving_avg_obs_fq_helper", 9), ("aten.silu", 5), ("aten.silu_backward", 9)];
        for (name, per) in cases {
            let p = price(&op(name, vec![vec![4, 8]], vec![vec![4, 8]])).unwrap();
            assert_eq!(p, vec![(Category::Elementwise, per * 32)], "{name}");
        }
    }

    #[test]
    fn the_peers_layers_are_priced_from_their_shapes() {
        // An LSTM layer over 2 x 5 tokens, input 3, cell 4: gates 2 T 4H (I + H), 30 per cell element.
        let lstm = op("aten.mkldnn_rnn_layer", vec![vec![2, 5, 3], vec![16, 3], vec![16, 4], vec![16], vec![16]], vec![]);
        assert_eq!(price(&lstm).unwrap(), vec![(Category::Matmul, 2 * 10 * 16 * 7), (Category::Elementwise, 30 * 10 * 4)]);
        let back = op("aten._cudnn_rnn_backward", vec![vec![2, 5, 3], vec![16, 3], vec![16, 4]], vec![]);
        assert_eq!(price(&back).unwrap(), vec![(Category::Matmul, 4 * 10 * 16 * 7), (Category::Elementwise, 60 * 10 * 4)]);
        // Mamba's depthwise causal conv: 6 channels, kernel 4, 2 x 6 x 9 outputs, with a bias.
        let conv = op("aten.convolution", vec![vec![2, 6, 6], vec![6, 1, 4], vec![6]], vec![vec![2, 6, 9]]);
        assert_eq!(price(&conv).unwrap(), vec![(Category::Matmul, 2 * 108 * 4), (Category::Elementwise, 108)]);
        let conv_back = op("aten.convolution_backward", vec![vec![2, 6, 9], vec![2, 6, 6], vec![6, 1, 4]], vec![]);
        assert_eq!(price(&conv_back).unwrap(), vec![(Category::Matmul, 4 * 108 * 4), (Category::Reduction, 108)]);
    }

    #[test]
    fn bk_core_and_optimizer_prices() {
        let mut bk = op("resnetbk.bk_core", vec![vec![2, 10], vec![9], vec![2]], vec![vec![2, 10]]);
        bk.detail = "causal".into();
        assert_eq!(price(&bk).unwrap(), vec![(Category::BkCore, 12 * 20)]);
        bk.detail = "bidirectional".into();
        assert_eq!(price(&bk).unwrap(), vec![(Category::BkCore, 34 * 20)]);
        let mut bwd = op("resnetbk.bk_core_backward", vec![vec![2, 10], vec![2, 10], vec![9], vec![2]], vec![]);
        bwd.detail = "causal".into();
        assert_eq!(price(&bwd).unwrap(), vec![(Category::BkCore, 33 * 20)]);
        let mut adamw = op("optimizer.adamw", vec![vec![10, 10], vec![10]], vec![]);
        adamw.detail = "weight_decay".into();
        assert_eq!(price(&adamw).unwrap(), vec![(Category::Optimizer, 14 * 110)]);
    }

    #[test]
    fn unknown_ops_are_listed_not_zero() {
        let records = vec![
            rec(op("aten.mm", vec![vec![2, 2], vec![2, 2]], vec![vec![2, 2]]), Phase::Forward, "head"),
            rec(op("aten.fancy_new_kernel", vec![vec![8]], vec![vec![8]]), Phase::Forward, "head"),
            rec(op("aten.fancy_new_kernel", vec![vec![8]], vec![vec![8]]), Phase::Backward, "head"),
            rec(op("aten.view", vec![vec![8]], vec![vec![2, 4]]), Phase::Forward, "head"),
        ];
        let r = aggregate(&records);
        assert_eq!(r.total, 16);
        assert_eq!(r.unknown.get("aten.fancy_new_kernel"), Some(&2));
        assert_eq!(r.by_category.get("data_movement"), Some(&0));
        assert_eq!(r.by_component["head"]["forward"], 16);
        assert_eq!(r.by_phase["backward"], 0);
    }

    #[test]
    fn counts_multiply_and_phases_split() {
        let mut a = rec(op("aten.add", vec![vec![4], vec![4]], vec![vec![4]]), Phase::Backward, "x");
        a.count = 3;
        let b = rec(op("aten.add_", vec![vec![4], vec![4]], vec![vec![4]]), Phase::Optimizer, "y");
        let r = aggregate(&[a, b]);
        assert_eq!((r.by_phase["backward"], r.by_phase["optimizer"], r.total), (12, 4, 16));
    }
}
