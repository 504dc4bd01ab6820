//! Opening real safetensors files: single files, shards, folders, every computed dtype.

use mergescope_core::checkpoint::{Checkpoint, ModelConfig, Storage};
use mergescope_core::dtype::Dtype;
use mergescope_tests::cli::run;
use mergescope_tests::fixture::{
    Tensor, llama_tensors, round_trip, write_config, write_file, write_sharded,
};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

#[test]
fn decodes_f32_f16_and_bf16_exactly_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let values = Tensor::new("w", &[3, 5], |i| (i as f32 - 7.0) * 0.173);
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        write_file(&path, std::slice::from_ref(&values), dtype);
        let ckpt = Checkpoint::open(&path).unwrap();
        assert_eq!(ckpt.tensors().len(), 1);
        let info = &ckpt.tensors()[0];
        assert_eq!((info.dtype, info.shape.clone()), (dtype, vec![3, 5]));
        let decoded = ckpt.view(0).to_f32_vec();
        let expected: Vec<f32> = values
            .values
            .iter()
            .map(|v| round_trip(*v, dtype))
            .collect();
        assert_eq!(decoded, expected, "{dtype:?}");
        // A loose file is not a Hugging Face folder: no config is picked up from beside it.
        assert!(ckpt.folder().is_none());
    }
}

#[test]
fn opens_sharded_folders_by_folder_and_by_index_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("sharded");
    let tensors = llama_tensors(3, 1);
    write_sharded(&folder, &tensors, Dtype::BF16, 4);
    write_config(&folder, 3, Dtype::BF16);
    for path in [folder.clone(), folder.join("model.safetensors.index.json")] {
        let ckpt = Checkpoint::open(&path).unwrap();
        assert_eq!(ckpt.shards().len(), tensors.len().div_ceil(4));
        assert!(matches!(ckpt.storage(), Storage::Sharded(_)));
        let names: Vec<_> = ckpt.tensors().iter().map(|t| t.name.clone()).collect();
        // The safetensors writer stores a file's tensors sorted by name; the reader must keep
        // shard order, then byte order inside each shard.
        let expected: Vec<_> = tensors
            .chunks(4)
            .flat_map(|shard| {
                let mut names: Vec<_> = shard.iter().map(|t| t.name.clone()).collect();
                names.sort();
                names
            })
            .collect();
        assert_eq!(
            names, expected,
            "tensors come in shard order, then file order"
        );
        assert_eq!(ckpt.config().and_then(ModelConfig::num_layers), Some(3));
        let last = ckpt.index_of("lm_head.weight").unwrap();
        let expected: Vec<f32> = tensors
            .last()
            .unwrap()
            .values
            .iter()
            .map(|v| round_trip(*v, Dtype::BF16))
            .collect();
        assert_eq!(ckpt.view(last).to_f32_vec(), expected);
    }
}

#[test]
fn a_folder_with_one_differently_named_file_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        &dir.path().join("weights.safetensors"),
        &llama_tensors(1, 0),
        Dtype::F32,
    );
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.tensors().len(), llama_tensors(1, 0).len());
}

#[test]
fn inspect_lists_both_shards_of_the_parity_fine_tune() {
    let ft_a = mergescope_tests::parity_dir().join("family/ft_a");
    let out = run(BIN, &ft_a, &["inspect", "."]);
    out.assert_success();
    let text = out.stdout();
    assert!(
        text.contains("model-00001-of-00002.safetensors")
            && text.contains("model-00002-of-00002.safetensors"),
        "{text}"
    );
    assert!(
        text.contains("4 layers") && text.contains("LlamaForCausalLM"),
        "{text}"
    );
    assert!(
        text.contains("model.layers.3.mlp.down_proj.weight") && text.contains("lm_head.weight"),
        "{text}"
    );

    let json = run(BIN, &ft_a, &["inspect", ".", "--json"]);
    json.assert_success();
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(parsed["shards"].as_array().unwrap().len(), 2);
    assert_eq!(parsed["tensors"].as_array().unwrap().len(), 39);
    assert_eq!(parsed["num_layers"], 4);
    assert_eq!(parsed["parameters"], 180_800);
    let shard_of = |name: &str| {
        parsed["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["shard"]
            .as_u64()
            .unwrap()
    };
    assert_ne!(
        shard_of("model.embed_tokens.weight"),
        shard_of("lm_head.weight")
    );
}
