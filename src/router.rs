//! The learned router: per prompt, the probability that the cheap model's
//! answer fails where the strong model's would not be needed — RouteLLM's
//! idea, trained on a team's own comparison results.
//!
//! **Method: L2-regularised logistic regression over hashed lexical
//! features plus two length features.** Why this and not RouteLLM's
//! anchors: its BERT classifier and matrix-factorisation routers need a
//! neural encoder (an embedding per prompt) at routing time; here routing
//! happens inside `plan`, which must stay deterministic, offline and fast
//! (milliseconds, no server, no GPU — a 2-core CPU box). A bag of word
//! unigrams and bigrams, hashed into a fixed number of buckets (the
//! "hashing trick": no vocabulary to store, any text maps somewhere), is
//! what a prompt's *kind* mostly shows — "classify", "extract the labels",
//! a long multi-part question — and the length features carry size. A kNN
//! over the same vectors was the other fair option; it needs every training
//! prompt in the file (large, and the prompts may be confidential) where a
//! logistic model keeps only weights. Embeddings from the local llama.cpp
//! server would make `plan` depend on a running server: left out.
//!
//! The fitting is a few lines of full-batch gradient descent written here
//! rather than a crate (linfa-logistic, smartcore): the problem is convex
//! and tiny (hundreds of examples, tens of features each), full-batch
//! descent from zero has no randomness at all — no seed, no shuffling, no
//! BLAS thread order — so the same data gives the same file byte for byte,
//! and those crates would add ndarray/argmin and their ~40 dependencies to
//! every tollgate build for one small convex fit.
//!
//! The file (JSON, [`FORMAT`] version [`VERSION`]) carries its feature
//! spec (hash, buckets, n-grams, character cap) so a reader can recompute
//! the features exactly; the weights are sparse and sorted; the held-out
//! calibration scores let a policy ask for a target strong share instead of
//! a raw threshold. Loading is bounded ([`MAX_FILE_BYTES`], bucket and
//! score counts, finite numbers): a hostile file is a located error.
//!
//! The split is deterministic: each example's key (`suite/case/step`) is
//! hashed; bucket 0 of [`SPLIT_MODULUS`] is the test split (`router eval`),
//! bucket 1 the calibration split (thresholds), the rest train.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::diagnostic::{Diagnostic, SourceFile};

pub const FORMAT: &str = "tollgate-router";
pub const VERSION: u32 = 1;
pub const METHOD: &str = "logistic-regression";
pub const HASH: &str = "fnv1a-64";
/// The largest router file read: 8 MiB (a real one is tens of KiB).
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
pub const MAX_BUCKETS: u32 = 1 << 20;
pub const MAX_CALIBRATION: usize = 200_000;
/// Characters of a prompt the features read: the same cap in training and
/// routing (and in the prompt text `compare` keeps per step).
pub const MAX_TEXT_CHARS: usize = 4096;
pub const DEFAULT_BUCKETS: u32 = 4096;
pub const SPLIT_MODULUS: u64 = 5;
const ITERATIONS: usize = 500;
const LEARNING_RATE: f64 = 1.0;
const L2: f64 = 1e-3;

/// The text a router reads from one call: its messages, each on its own
/// lines, capped at [`MAX_TEXT_CHARS`] characters.
pub fn text<'a>(messages: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for (i, m) in messages.enumerate() {
        if i > 0 && chars < MAX_TEXT_CHARS {
            out.push('\n');
            chars += 1;
        }
        for c in m.chars() {
            if chars >= MAX_TEXT_CHARS {
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    out
}

/// How a text becomes features. Fixed by [`VERSION`] except `buckets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// `fnv1a-64` of the n-gram's text (`u:word`, `b:word word`).
    pub hash: String,
    pub buckets: u32,
    /// Word unigrams and bigrams: `2`.
    pub ngrams: u32,
    /// Lowercased; words are maximal runs of alphanumeric characters.
    pub lowercase: bool,
    pub max_chars: u32,
    /// The n-gram counts are scaled to unit length; two dense features
    /// follow: `ln(1+chars)/8` and `ln(1+words)/6`.
    pub length_features: Vec<String>,
}

impl FeatureSpec {
    pub fn new(buckets: u32) -> FeatureSpec {
        FeatureSpec {
            hash: HASH.to_owned(),
            buckets,
            ngrams: 2,
            lowercase: true,
            max_chars: MAX_TEXT_CHARS as u32,
            length_features: vec!["ln(1+chars)/8".to_owned(), "ln(1+words)/6".to_owned()],
        }
    }
}

/// Sparse features: sorted (bucket, value) pairs, and the dense length pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub sparse: Vec<(u32, f64)>,
    pub length: [f64; 2],
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_parts(&[bytes])
}

/// FNV-1a of the parts' concatenation, without building it.
fn fnv1a_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The features of a text under `spec` (which [`Router::load`] checked).
pub fn features(spec: &FeatureSpec, text: &str) -> Features {
    let text: String = text.chars().take(spec.max_chars as usize).collect();
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let mut counts: BTreeMap<u32, f64> = BTreeMap::new();
    let bucket = |parts: &[&[u8]]| (fnv1a_parts(parts) % u64::from(spec.buckets)) as u32;
    for w in &words {
        *counts.entry(bucket(&[b"u:", w.as_bytes()])).or_default() += 1.0;
    }
    for pair in words.windows(2) {
        *counts
            .entry(bucket(&[
                b"b:",
                pair[0].as_bytes(),
                b" ",
                pair[1].as_bytes(),
            ]))
            .or_default() += 1.0;
    }
    let norm = counts.values().map(|v| v * v).sum::<f64>().sqrt();
    let sparse = counts
        .into_iter()
        .map(|(b, v)| (b, if norm > 0.0 { v / norm } else { 0.0 }))
        .collect();
    Features {
        sparse,
        length: [
            (1.0 + text.chars().count() as f64).ln() / 8.0,
            (1.0 + words.len() as f64).ln() / 6.0,
        ],
    }
}

/// A trained router, as its file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    pub format: String,
    pub version: u32,
    pub method: String,
    pub features: FeatureSpec,
    /// The variants it was trained to choose between (compare's names).
    pub weak: String,
    pub strong: String,
    pub bias: f64,
    /// The two length features' weights.
    pub length_weights: [f64; 2],
    /// Non-zero bucket weights, by bucket.
    pub weights: BTreeMap<u32, f64>,
    /// The default threshold: calibrated to `target_strong_share` on the
    /// calibration split. A rule holds (strong) when the score is above it.
    pub threshold: f64,
    pub target_strong_share: f64,
    /// The calibration split's scores, ascending: any target share's
    /// threshold is a quantile of these.
    pub calibration_scores: Vec<f64>,
    pub training: TrainingInfo,
}

/// What the router was trained on (counts only: no prompt is kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    pub examples: usize,
    pub train: usize,
    pub calibration: usize,
    pub test: usize,
    /// Training examples where the weak model failed (label 1).
    pub weak_failed: usize,
    pub split: String,
    pub iterations: usize,
    pub l2: f64,
}

impl Router {
    /// P(the weak model fails) for this text.
    pub fn score(&self, text: &str) -> f64 {
        let f = features(&self.features, text);
        sigmoid(self.margin(&f))
    }

    fn margin(&self, f: &Features) -> f64 {
        self.bias
            + f.length[0] * self.length_weights[0]
            + f.length[1] * self.length_weights[1]
            + f.sparse
                .iter()
                .map(|(b, v)| self.weights.get(b).copied().unwrap_or(0.0) * v)
                .sum::<f64>()
    }

    /// The threshold that sends `share` of the calibration split to the
    /// strong model.
    pub fn threshold_for(&self, share: f64) -> f64 {
        threshold_for(&self.calibration_scores, share)
    }

    /// Reads and checks a router file. Every problem is a diagnostic in
    /// that file (line and column for JSON errors).
    pub fn load(path: &Path) -> Result<Router, Diagnostic> {
        let text = crate::files::read_text_limited(path, MAX_FILE_BYTES).map_err(|err| {
            Diagnostic::error(
                "router-file",
                format!("cannot read router file {}: {err}", path.display()),
            )
            .with_help(
                err.hint()
                    .unwrap_or("give the path of a file written by `tollgate router train`"),
            )
        })?;
        let src = SourceFile::new(path, text);
        Router::parse(&src)
    }

    pub fn parse(src: &Arc<SourceFile>) -> Result<Router, Diagnostic> {
        let hint = "write it with `tollgate router train`; a router file is not edited by hand";
        let router: Router = serde_json::from_str(&src.text).map_err(|e| {
            let offset = src.offset_of(e.line().max(1), e.column().saturating_sub(1));
            Diagnostic::error("router-file", format!("invalid router file: {e}"))
                .at(Some(src.span(offset, 0)))
                .with_help(hint)
        })?;
        router.check().map_err(|(what, needle)| {
            let offset = src.text.find(needle).unwrap_or(0);
            Diagnostic::error("router-file", format!("invalid router file: {what}"))
                .at(Some(
                    src.span(offset, needle.len().min(src.text.len() - offset)),
                ))
                .with_help(hint)
        })?;
        Ok(router)
    }

    /// Bounds and meaning: the problem, and the key where it is.
    fn check(&self) -> Result<(), (String, &'static str)> {
        let fail = |w: String, at: &'static str| Err((w, at));
        if self.format != FORMAT {
            return fail(format!("format must be \"{FORMAT}\""), "\"format\"");
        }
        if self.version != VERSION {
            return fail(
                format!(
                    "version {} is not supported (this tollgate reads version {VERSION})",
                    self.version
                ),
                "\"version\"",
            );
        }
        if self.method != METHOD {
            return fail(format!("method must be \"{METHOD}\""), "\"method\"");
        }
        let f = &self.features;
        if *f != FeatureSpec::new(f.buckets) {
            return fail(
                "features: only the version-1 spec (fnv1a-64, unigrams and bigrams, lowercase, 4096 characters, two length features) is supported".to_owned(),
                "\"features\"",
            );
        }
        if f.buckets == 0 || f.buckets > MAX_BUCKETS {
            return fail(
                format!("features.buckets must be in 1..={MAX_BUCKETS}"),
                "\"buckets\"",
            );
        }
        if let Some((b, _)) = self.weights.iter().find(|(b, _)| **b >= f.buckets) {
            return fail(
                format!("weight bucket {b} is not below buckets ({})", f.buckets),
                "\"weights\"",
            );
        }
        let finite = self.bias.is_finite()
            && self.length_weights.iter().all(|w| w.is_finite())
            && self.weights.values().all(|w| w.is_finite());
        if !finite {
            return fail("weights must be finite numbers".to_owned(), "\"weights\"");
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return fail("threshold must be in 0..=1".to_owned(), "\"threshold\"");
        }
        if !(0.0..=1.0).contains(&self.target_strong_share) {
            return fail(
                "target_strong_share must be in 0..=1".to_owned(),
                "\"target_strong_share\"",
            );
        }
        let c = &self.calibration_scores;
        if c.is_empty() || c.len() > MAX_CALIBRATION {
            return fail(
                format!("calibration_scores must hold 1..={MAX_CALIBRATION} scores"),
                "\"calibration_scores\"",
            );
        }
        if c.iter().any(|s| !(0.0..=1.0).contains(s)) || c.windows(2).any(|w| w[0] > w[1]) {
            return fail(
                "calibration_scores must be ascending numbers in 0..=1".to_owned(),
                "\"calibration_scores\"",
            );
        }
        Ok(())
    }

    /// The file's text: pretty JSON, keys in a fixed order, a final newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a router serialises");
        s.push('\n');
        s
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The threshold above which `share` of `scores` (ascending) lie: with `k`
/// = round(share × n) scores to send to the strong model, halfway between
/// the k-th highest and the next (1 for none, 0 for all). Ties can make the
/// achieved share differ from the target: that is the calibration error
/// `router eval` reports.
pub fn threshold_for(scores: &[f64], share: f64) -> f64 {
    let n = scores.len();
    let k = ((share.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
    if n == 0 || k == 0 {
        return 1.0;
    }
    if k == n {
        return 0.0;
    }
    // Ascending: the k highest are scores[n-k..].
    (scores[n - k] + scores[n - k - 1]) / 2.0
}

/// Which split an example falls in, by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Calibration,
    Test,
}

pub fn split(key: &str) -> Split {
    match fnv1a(key.as_bytes()) % SPLIT_MODULUS {
        0 => Split::Test,
        1 => Split::Calibration,
        _ => Split::Train,
    }
}

/// One prompt with both models' outcomes and costs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    /// `suite/case/step`: the split's key.
    pub key: String,
    pub text: String,
    pub weak_ok: bool,
    pub strong_ok: bool,
    pub weak_cost_usd: f64,
    pub strong_cost_usd: f64,
}

/// Fits a router on the train split and calibrates it on the calibration
/// split. `Err` says what is missing.
pub fn train(
    examples: &[Example],
    weak: &str,
    strong: &str,
    buckets: u32,
    target_strong_share: f64,
) -> Result<Router, String> {
    let spec = FeatureSpec::new(buckets);
    let mut train = Vec::new();
    let mut calibration = Vec::new();
    let mut test = 0;
    for e in examples {
        match split(&e.key) {
            Split::Train => train.push(e),
            Split::Calibration => calibration.push(e),
            Split::Test => test += 1,
        }
    }
    if train.is_empty() || calibration.is_empty() {
        return Err(format!(
            "{} examples give {} to train on and {} to calibrate on: both need at least one (a fifth of the examples calibrate, a fifth test)",
            examples.len(),
            train.len(),
            calibration.len()
        ));
    }
    let xs: Vec<Features> = train.iter().map(|e| features(&spec, &e.text)).collect();
    let ys: Vec<f64> = train
        .iter()
        .map(|e| f64::from(u8::from(!e.weak_ok)))
        .collect();
    let mut router = Router {
        format: FORMAT.to_owned(),
        version: VERSION,
        method: METHOD.to_owned(),
        features: spec,
        weak: weak.to_owned(),
        strong: strong.to_owned(),
        bias: 0.0,
        length_weights: [0.0; 2],
        weights: BTreeMap::new(),
        threshold: 1.0,
        target_strong_share,
        calibration_scores: Vec::new(),
        training: TrainingInfo {
            examples: examples.len(),
            train: train.len(),
            calibration: calibration.len(),
            test,
            weak_failed: ys.iter().filter(|y| **y > 0.5).count(),
            split: format!(
                "fnv1a-64(suite/case/step) mod {SPLIT_MODULUS}: 0 test, 1 calibration, else train"
            ),
            iterations: ITERATIONS,
            l2: L2,
        },
    };
    fit(&mut router, &xs, &ys);
    let mut scores: Vec<f64> = calibration.iter().map(|e| router.score(&e.text)).collect();
    scores.sort_by(f64::total_cmp);
    router.threshold = threshold_for(&scores, target_strong_share);
    router.calibration_scores = scores;
    Ok(router)
}

/// Full-batch gradient descent on the mean log loss plus `L2/2 · |w|²`
/// (the bias unregularised), from zero: deterministic.
fn fit(router: &mut Router, xs: &[Features], ys: &[f64]) {
    let n = xs.len() as f64;
    // The buckets any example uses, numbered densely: the descent then
    // works on plain vectors (no map lookups in the inner loop).
    let buckets: Vec<u32> = xs
        .iter()
        .flat_map(|x| x.sparse.iter().map(|(b, _)| *b))
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .collect();
    let dense: Vec<Vec<(usize, f64)>> = xs
        .iter()
        .map(|x| {
            x.sparse
                .iter()
                .map(|(b, v)| (buckets.binary_search(b).expect("collected above"), *v))
                .collect()
        })
        .collect();
    let mut w = vec![0.0; buckets.len()];
    let mut g = vec![0.0; buckets.len()];
    for _ in 0..ITERATIONS {
        g.iter_mut().for_each(|v| *v = 0.0);
        let mut gb = 0.0;
        let mut gl = [0.0; 2];
        for ((x, feats), y) in xs.iter().zip(&dense).zip(ys) {
            let z = router.bias
                + x.length[0] * router.length_weights[0]
                + x.length[1] * router.length_weights[1]
                + feats.iter().map(|(i, v)| w[*i] * v).sum::<f64>();
            let err = sigmoid(z) - y;
            gb += err;
            gl[0] += err * x.length[0];
            gl[1] += err * x.length[1];
            for (i, v) in feats {
                g[*i] += err * v;
            }
        }
        router.bias -= LEARNING_RATE * gb / n;
        for (w, g) in router.length_weights.iter_mut().zip(gl) {
            *w -= LEARNING_RATE * (g / n + L2 * *w);
        }
        for (wb, gb) in w.iter_mut().zip(&g) {
            *wb -= LEARNING_RATE * (gb / n + L2 * *wb);
        }
    }
    let w: BTreeMap<u32, f64> = buckets.into_iter().zip(w).collect();
    // Rounded to 12 significant digits so the file reads the same on every
    // platform's last-bit differences in `exp`.
    router.bias = round(router.bias);
    router.length_weights = router.length_weights.map(round);
    router.weights = w
        .into_iter()
        .map(|(b, v)| (b, round(v)))
        .filter(|(_, v)| *v != 0.0)
        .collect();
}

fn round(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let digits = 12 - (v.abs().log10().floor() as i32) - 1;
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

// ---------------------------------------------------------------------------
// Evaluation.

/// One routed example of the test split.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub score: f64,
    pub weak_ok: bool,
    pub strong_ok: bool,
    pub weak_cost_usd: f64,
    pub strong_cost_usd: f64,
}

/// One point of a quality/cost curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub strong_share: f64,
    /// Share of the examples answered correctly.
    pub quality: f64,
    pub cost_usd: f64,
    /// Performance gap recovered: `(quality − weak) / (strong − weak)`;
    /// `None` when the two models are equally good here.
    pub pgr: Option<f64>,
}

/// `router eval`'s figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub examples: usize,
    pub weak_quality: f64,
    pub strong_quality: f64,
    pub weak_cost_usd: f64,
    pub strong_cost_usd: f64,
    /// Quality and cost when the k highest scores go to the strong model,
    /// k = round(share × n), shares 0, 0.1, …, 1.
    pub router: Vec<Point>,
    /// Random routing at the same shares: its expectation (weak + share ×
    /// (strong − weak), in quality and in cost).
    pub random: Vec<Point>,
    /// APGR as RouteLLM reports it (Ong et al. 2024, §5): the area under
    /// the PGR curve over the strong share, approximated by the mean PGR
    /// at shares 10%, 20%, …, 100%. Random routing's is 0.55 on that grid.
    pub apgr: Option<f64>,
    pub random_apgr: Option<f64>,
    /// Per target share (0.1 … 0.9): the threshold the calibration split
    /// gives, and the share of the test split above it.
    pub calibration: Vec<Calibration>,
    /// Mean and largest |achieved − target|.
    pub calibration_error_mean: f64,
    pub calibration_error_max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    pub target: f64,
    pub threshold: f64,
    pub achieved: f64,
}

pub const GRID: usize = 10;

/// Highest score first; ties keep input order (the caller's, sorted by key).
fn ranked(items: &[Scored]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|a, b| items[*b].score.total_cmp(&items[*a].score));
    order
}

/// Quality and cost when the k = round(share × n) highest-scored examples
/// go to the strong model.
fn routed(items: &[Scored], order: &[usize], share: f64) -> (f64, f64) {
    let n = items.len() as f64;
    let k = (share * n).round() as usize;
    let mut ok = 0usize;
    let mut cost = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let it = &items[i];
        let strong = rank < k;
        ok += usize::from(if strong { it.strong_ok } else { it.weak_ok });
        cost += if strong {
            it.strong_cost_usd
        } else {
            it.weak_cost_usd
        };
    }
    (ok as f64 / n, cost)
}

/// What always-weak and always-strong routing give on some examples: the
/// two ends every curve runs between.
struct Baseline {
    weak_quality: f64,
    strong_quality: f64,
    weak_cost: f64,
    strong_cost: f64,
}

impl Baseline {
    fn of(items: &[Scored]) -> Option<Baseline> {
        if items.is_empty() {
            return None;
        }
        let n = items.len() as f64;
        Some(Baseline {
            weak_quality: items.iter().filter(|i| i.weak_ok).count() as f64 / n,
            strong_quality: items.iter().filter(|i| i.strong_ok).count() as f64 / n,
            weak_cost: items.iter().map(|i| i.weak_cost_usd).sum(),
            strong_cost: items.iter().map(|i| i.strong_cost_usd).sum(),
        })
    }

    /// The share of the quality gap a quality recovers (none without a gap).
    fn pgr(&self, q: f64) -> Option<f64> {
        let gap = self.strong_quality - self.weak_quality;
        (gap.abs() > 1e-12).then(|| (q - self.weak_quality) / gap)
    }

    /// The router at a strong share: the highest scores go to the strong side.
    fn router(&self, items: &[Scored], order: &[usize], share: f64) -> Point {
        let (quality, cost_usd) = routed(items, order, share);
        Point {
            strong_share: share,
            quality,
            cost_usd,
            pgr: self.pgr(quality),
        }
    }

    /// Random routing at a strong share, in expectation.
    fn random(&self, share: f64) -> Point {
        let quality = self.weak_quality + share * (self.strong_quality - self.weak_quality);
        Point {
            strong_share: share,
            quality,
            cost_usd: self.weak_cost + share * (self.strong_cost - self.weak_cost),
            pgr: self.pgr(quality),
        }
    }
}

/// The router and random routing at one strong share (another policy's,
/// a cascade's escalation share): `(router, random)`.
pub fn at_share(items: &[Scored], share: f64) -> Option<(Point, Point)> {
    let base = Baseline::of(items)?;
    Some((
        base.router(items, &ranked(items), share),
        base.random(share),
    ))
}

/// Evaluates scored test examples; `calibration_scores` are the router
/// file's (ascending).
pub fn evaluate(items: &[Scored], calibration_scores: &[f64]) -> Option<Evaluation> {
    let base = Baseline::of(items)?;
    let n = items.len() as f64;
    let order = ranked(items);
    let mut router = Vec::new();
    let mut random = Vec::new();
    for g in 0..=GRID {
        let share = g as f64 / GRID as f64;
        router.push(base.router(items, &order, share));
        random.push(base.random(share));
    }
    let area = |pts: &[Point]| -> Option<f64> {
        let p: Option<Vec<f64>> = pts.iter().map(|p| p.pgr).collect();
        let p = p?;
        Some(p[1..].iter().sum::<f64>() / GRID as f64)
    };
    let mut calibration = Vec::new();
    for t in 1..GRID {
        let target = t as f64 / GRID as f64;
        let threshold = threshold_for(calibration_scores, target);
        let achieved = items.iter().filter(|i| i.score > threshold).count() as f64 / n;
        calibration.push(Calibration {
            target,
            threshold,
            achieved,
        });
    }
    let errs: Vec<f64> = calibration
        .iter()
        .map(|c| (c.achieved - c.target).abs())
        .collect();
    Some(Evaluation {
        examples: items.len(),
        weak_quality: base.weak_quality,
        strong_quality: base.strong_quality,
        weak_cost_usd: base.weak_cost,
        strong_cost_usd: base.strong_cost,
        apgr: area(&router),
        random_apgr: area(&random),
        router,
        random,
        calibration_error_mean: errs.iter().sum::<f64>() / errs.len() as f64,
        calibration_error_max: errs.iter().copied().fold(0.0, f64::max),
        calibration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(key: &str, text: &str, weak_ok: bool) -> Example {
        Example {
            key: key.to_owned(),
            text: text.to_owned(),
            weak_ok,
            strong_ok: true,
            weak_cost_usd: 0.0,
            strong_cost_usd: 1.0,
        }
    }

    #[test]
    fn text_is_capped_in_characters() {
        let long = "é".repeat(MAX_TEXT_CHARS + 10);
        let t = text([long.as_str(), "more"].into_iter());
        assert_eq!(t.chars().count(), MAX_TEXT_CHARS);
        assert_eq!(text(["a", "b"].into_iter()), "a\nb");
    }

    #[test]
    fn ngram_hashes_are_of_the_spec_strings() {
        // The file's spec says `fnv1a-64("u:word")` and `("b:w1 w2")`.
        assert_eq!(fnv1a_parts(&[b"u:", b"bug"]), fnv1a(b"u:bug"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn features_are_unit_length_and_case_blind() {
        let spec = FeatureSpec::new(64);
        let a = features(&spec, "Classify THIS ticket");
        let b = features(&spec, "classify this ticket");
        assert_eq!(a, b);
        let norm: f64 = a.sparse.iter().map(|(_, v)| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-12);
        assert!(a.sparse.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn training_learns_the_separating_words_and_is_deterministic() {
        let mut data = Vec::new();
        for i in 0..60 {
            data.push(ex(
                &format!("s/easy{i}/a"),
                &format!("classify ticket {i}"),
                true,
            ));
            data.push(ex(
                &format!("s/hard{i}/a"),
                &format!("explain the proof of theorem {i} in detail"),
                false,
            ));
        }
        let a = train(&data, "weak", "strong", 256, 0.5).unwrap();
        let b = train(&data, "weak", "strong", 256, 0.5).unwrap();
        assert_eq!(a.to_json(), b.to_json());
        assert!(a.score("explain the proof of theorem 7") > 0.5);
        assert!(a.score("classify ticket 7") < 0.5);
        let parsed = Router::parse(&SourceFile::new("r.json", a.to_json())).unwrap();
        assert_eq!(parsed, a);
    }

    #[test]
    fn thresholds_are_quantiles_of_the_calibration_scores() {
        let s = [0.1, 0.2, 0.3, 0.4];
        assert_eq!(threshold_for(&s, 0.0), 1.0);
        assert_eq!(threshold_for(&s, 1.0), 0.0);
        assert!((threshold_for(&s, 0.5) - 0.25).abs() < 1e-12);
        assert!((threshold_for(&s, 0.25) - 0.35).abs() < 1e-12);
    }

    /// Four examples, worked by hand: weak right on 2 of 4 (q_w = 0.5),
    /// strong on all (q_s = 1). The router ranks the two weak failures
    /// first, so at share 0.5 it recovers the whole gap.
    #[test]
    fn evaluation_by_hand() {
        let item = |score: f64, weak_ok: bool| Scored {
            score,
            weak_ok,
            strong_ok: true,
            weak_cost_usd: 0.0,
            strong_cost_usd: 1.0,
        };
        let items = [
            item(0.9, false),
            item(0.8, false),
            item(0.2, true),
            item(0.1, true),
        ];
        let e = evaluate(&items, &[0.1, 0.2, 0.8, 0.9]).unwrap();
        assert_eq!(e.weak_quality, 0.5);
        assert_eq!(e.strong_quality, 1.0);
        // Shares 0, .1, …, 1 → k = round(4s) = 0,0,1,1,2,2,2,3,3,4,4.
        let q: Vec<f64> = e.router.iter().map(|p| p.quality).collect();
        assert_eq!(q, [0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        // PGR = 2q − 1: 0,0,.5,.5,1,1,1,1,1,1,1; the mean of the last ten
        // (shares 10% … 100%): (0 + .5 + .5 + 7 × 1) / 10 = 0.8.
        assert!((e.apgr.unwrap() - 0.8).abs() < 1e-12);
        // Random: PGR = share, mean of .1 … 1 = 0.55.
        assert!((e.random_apgr.unwrap() - 0.55).abs() < 1e-12);
        // Calibration on the same scores: target .5 → threshold .5, 2 of 4 above.
        let half = &e.calibration[4];
        assert_eq!(
            (half.target, half.threshold, half.achieved),
            (0.5, 0.5, 0.5)
        );
        // Target .1 → k = round(.4) = 0 → threshold 1 → achieved 0: error .1.
        assert_eq!(e.calibration[0].achieved, 0.0);
        assert!((e.calibration_error_max - 0.1).abs() < 1e-12);
    }
}
