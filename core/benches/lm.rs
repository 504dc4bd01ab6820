//! The language-model runner's speed on this machine's CPU (issue 18's figures):
//!
//! - on the built-in language-model demo family (`assets/lm-demo`): forward tokens/s over a
//!   full context window, generation tokens/s (greedy, with the key/value cache), and the time
//!   from a slider's release to the perplexity preview — the recipe merged in memory, the
//!   merge loaded as a model and scored on the quick fidelity (each domain's first
//!   2,048 tokens) and on the full held-out texts — with the process's peak RSS after it;
//! - on a Qwen2.5-0.5B-shaped model with random weights (the real shape: 24 layers, hidden 896,
//!   14 query and 2 key/value heads, 151,936 tokens, tied embeddings): forward tokens/s over
//!   a 128-token window and generation tokens/s.
//!
//! Run it with:
//!
//!     cargo bench -p mergescope-core --bench lm
//!     MERGESCOPE_BENCH_SKIP_QWEN=1 cargo bench -p mergescope-core --bench lm   # the demo only

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use mergescope_core::CancelToken;
use mergescope_core::backend::Cpu;
use mergescope_core::eval::lm::demo::LmDemoFamily;
use mergescope_core::eval::lm::generate::{GenerateOptions, Sampling, TextCodec, generate};
use mergescope_core::eval::lm::perplexity::QUICK_TOKENS;
use mergescope_core::eval::lm::{CausalLm, LmFiles};
use mergescope_core::eval::preview::merge_in_memory;
use mergescope_core::eval::{Fidelity, ModelTensors};
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use rand::{Rng as _, SeedableRng as _};

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The process's peak resident set so far (`VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let kib = line.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?;
                kib.trim().parse::<f64>().ok()
            })
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Forward tokens/s over `tokens` (every position's logits), the median of `runs`.
fn forward_rate(model: &CausalLm, tokens: &[u32], runs: usize) -> f64 {
    let times: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            model.logits(tokens).expect("a forward pass");
            started.elapsed().as_secs_f64()
        })
        .collect();
    tokens.len() as f64 / median(times)
}

/// Generation tokens/s (after the prompt), greedy, `max_tokens` new tokens.
fn generation_rate(model: &CausalLm, codec: &TextCodec, prompt: &str, max_tokens: usize) -> f64 {
    let options = GenerateOptions {
        max_tokens,
        sampling: Sampling::Greedy,
    };
    let generated = generate(
        model,
        "bench",
        codec,
        prompt,
        &options,
        &CancelToken::default(),
        |_| {},
    )
    .expect("generation");
    println!(
        "    ({} tokens generated, {})",
        generated.tokens.len(),
        generated.stop.describe()
    );
    generated.tokens_per_second()
}

fn demo_family() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let family = LmDemoFamily::extract(dir.path()).expect("the demo family");
    let files = LmFiles::in_folders(&family.base(), &family.base()).expect("the base's files");
    let perplexity = family.perplexity().expect("the family's texts");
    let context = files.context().unwrap_or(256);
    println!(
        "language-model demo family: {} domains, {} held-out tokens, windows of {} moving by {}",
        perplexity.domains.domains.len(),
        perplexity.domains.tokens(),
        perplexity.window,
        perplexity.stride
    );

    let base = CausalLm::from_tensors(
        &files.config,
        &files.config_path,
        &ModelTensors::all_floats(
            &mergescope_core::Checkpoint::open(family.base()).expect("the base"),
        ),
        "base",
    )
    .expect("the base loads");
    let window: Vec<u32> = perplexity.domains.domains[0]
        .1
        .iter()
        .copied()
        .cycle()
        .take(context)
        .collect();
    println!(
        "  forward, {context}-token window: {:.0} tokens/s",
        forward_rate(&base, &window, 9)
    );
    let codec = TextCodec::load(&files).expect("the tokenizer");
    println!(
        "  generation, 128 tokens: {:.0} tokens/s",
        generation_rate(&base, &codec, "The ", 128)
    );
    drop(base);

    let options = PlanOptions {
        cwd: dir.path().to_path_buf(),
        random_seed: Some(0),
        truncate_vocab: false,
    };
    for recipe in ["task_arithmetic", "ties"] {
        let plan =
            MergePlan::from_file(&family.recipe(recipe), &options).expect("the shipped recipe");
        // Milliseconds of the merge, of loading it as a model and of scoring it.
        let preview = |fidelity: Fidelity| {
            let started = Instant::now();
            let merged = merge_in_memory(&plan, &Cpu).expect("the merge");
            let merging = started.elapsed().as_secs_f64() * 1e3;
            let model = perplexity.model_of(&merged, "the merge").expect("loads");
            drop(merged);
            let loading = started.elapsed().as_secs_f64() * 1e3 - merging;
            let scores = perplexity.score(&model, fidelity).expect("scores");
            let total = started.elapsed().as_secs_f64() * 1e3;
            ([total, merging, loading, total - merging - loading], scores)
        };
        let medians = |runs: Vec<[f64; 4]>| -> [f64; 4] {
            std::array::from_fn(|i| median(runs.iter().map(|r| r[i]).collect()))
        };
        let quick = medians(
            (0..9)
                .map(|_| preview(Fidelity::Subsample(QUICK_TOKENS)).0)
                .collect(),
        );
        let mut last = BTreeMap::new();
        let full = medians(
            (0..5)
                .map(|_| {
                    let (ms, scores) = preview(Fidelity::Full);
                    last = scores;
                    ms
                })
                .collect(),
        );
        for (name, [total, merging, loading, scoring]) in [
            (format!("quick ({QUICK_TOKENS} tokens per domain)"), quick),
            ("full (all held-out text)".to_owned(), full),
        ] {
            println!(
                "  {recipe}: release → preview, {name}: {total:.0} ms (merge {merging:.1}, \
                 load {loading:.1}, score {scoring:.0}; medians)"
            );
        }
        println!(
            "  {recipe}: mean perplexity {:.2}; peak RSS so far {:.0} MiB",
            last.get("mean/perplexity").copied().unwrap_or(f64::NAN),
            peak_rss_mib()
        );
    }
}

/// A Qwen2.5-0.5B-shaped model with random weights (std 0.02; norms 1), in memory.
fn qwen_shaped() -> (serde_json::Value, ModelTensors) {
    let (hidden, layers, heads, kv_heads, inter, vocab) = (896, 24, 14, 2, 4864, 151_936);
    let head_dim = hidden / heads;
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "sliding_window": 32768,
        "use_sliding_window": false,
        "tie_word_embeddings": true,
        "vocab_size": vocab,
        "hidden_act": "silu",
        "bos_token_id": 151_643,
        "eos_token_id": 151_643,
        "torch_dtype": "bfloat16"
    });
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut values = BTreeMap::new();
    let mut random = |name: String, n: usize| {
        let v: Vec<f32> = (0..n)
            .map(|_| (rng.random::<f32>() - 0.5) * 0.0693)
            .collect();
        values.insert(name, v);
    };
    random("model.embed_tokens.weight".to_owned(), vocab * hidden);
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        random(format!("{p}.self_attn.q_proj.weight"), hidden * hidden);
        random(format!("{p}.self_attn.q_proj.bias"), hidden);
        for kv in ["k", "v"] {
            random(
                format!("{p}.self_attn.{kv}_proj.weight"),
                kv_heads * head_dim * hidden,
            );
            random(format!("{p}.self_attn.{kv}_proj.bias"), kv_heads * head_dim);
        }
        random(format!("{p}.self_attn.o_proj.weight"), hidden * hidden);
        random(format!("{p}.mlp.gate_proj.weight"), inter * hidden);
        random(format!("{p}.mlp.up_proj.weight"), inter * hidden);
        random(format!("{p}.mlp.down_proj.weight"), hidden * inter);
    }
    let mut ones = |name: String| {
        values.insert(name, vec![1.0; hidden]);
    };
    for i in 0..layers {
        ones(format!("model.layers.{i}.input_layernorm.weight"));
        ones(format!("model.layers.{i}.post_attention_layernorm.weight"));
    }
    ones("model.norm.weight".to_owned());
    (config, ModelTensors { values })
}

fn qwen() {
    let started = Instant::now();
    let (config, tensors) = qwen_shaped();
    let parameters: usize = tensors.values.values().map(Vec::len).sum();
    let model = CausalLm::from_tensors(&config, Path::new("config.json"), &tensors, "qwen")
        .expect("the Qwen2 runner loads it");
    drop(tensors);
    println!(
        "Qwen2.5-0.5B-shaped, random weights ({:.0} M parameters, f32, made in {:.1} s):",
        parameters as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let window: Vec<u32> = (0..128u32).map(|i| (i * 7919) % 151_000).collect();
    println!(
        "  forward, 128-token window: {:.1} tokens/s",
        forward_rate(&model, &window, 3)
    );
    // Greedy generation without a tokenizer: the cache path, a token at a time.
    let mut cache = model.new_cache();
    model.extend(&mut cache, &window[..16]).expect("prompt");
    let steps = 32;
    let begun = Instant::now();
    let mut next = 1u32;
    for _ in 0..steps {
        let logits = model.extend(&mut cache, &[next]).expect("a step");
        let row: Vec<f32> = logits.squeeze(0).and_then(|r| r.to_vec1()).expect("row");
        next = mergescope_core::eval::lm::generate::argmax(&row);
    }
    println!(
        "  generation (key/value cache, greedy), {steps} tokens after a 16-token prompt: {:.1} tokens/s",
        steps as f64 / begun.elapsed().as_secs_f64()
    );
    println!("  peak RSS so far {:.0} MiB", peak_rss_mib());
}

fn main() {
    demo_family();
    if std::env::var_os("MERGESCOPE_BENCH_SKIP_QWEN").is_none() {
        qwen();
    }
}
