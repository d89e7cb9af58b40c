//! End-to-end partition tests on the real excerpts: coverage, counts, determinism, label
//! skew, Parquet read-back with arrow, and "error ⇒ nothing written".

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, UInt32Type};
use common::{fixtures, small_masakha, small_xnli};
use datasets::readers::{masakhanews, xnli};
use datasets::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn all_examples(ds: &PartitionedDataset, split: Split) -> Vec<(u32, Example)> {
    ds.pools
        .iter()
        .flat_map(|p| &p.clients)
        .flat_map(|c| {
            let rows = if split == Split::Train {
                &c.train
            } else {
                &c.test
            };
            rows.iter().map(move |e| (c.client_id, e.clone()))
        })
        .collect()
}

fn multiset(rows: impl IntoIterator<Item = (String, u32)>) -> BTreeMap<(String, u32), usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(r).or_default() += 1;
    }
    m
}

#[test]
fn masakhanews_every_row_lands_in_exactly_one_client() {
    let dir = fixtures().join("masakhanews");
    let ds = partition_masakhanews(&dir, &small_masakha(), 42).unwrap();
    assert_eq!(ds.warnings.len(), 1);
    assert!(ds.warnings[0].contains("eng") && !ds.warnings[0].contains("lin"));
    for lang in ["eng", "lin"] {
        let data = masakhanews::read_language(&dir, lang).unwrap();
        for (split, input) in [(Split::Train, &data.train), (Split::Test, &data.test)] {
            let got: Vec<(String, u32)> = all_examples(&ds, split)
                .into_iter()
                .filter(|(_, e)| e.language == lang)
                .map(|(_, e)| (e.text_a, e.label_id.unwrap()))
                .collect();
            let want = input.iter().map(|r| (r.text.clone(), r.label_id));
            assert_eq!(multiset(got), multiset(want), "{lang} {split:?}");
        }
        // Each language split in half between the pools (seen gets n / 2).
        let seen_train: usize = ds.pools[0]
            .clients
            .iter()
            .filter(|c| c.language == lang)
            .map(|c| c.train.len())
            .sum();
        assert_eq!(seen_train, data.train.len() / 2, "{lang}");
    }
    // 2 languages × 3 clients per pool, ids unique across pools.
    let ids: Vec<u32> = ds
        .pools
        .iter()
        .flat_map(|p| &p.clients)
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, (0..12).collect::<Vec<u32>>());
}

#[test]
fn xnli_pools_are_disjoint_samples_with_paper_counts() {
    let ds = partition_xnli(&fixtures().join("xnli"), &small_xnli(), 42).unwrap();
    for (p, pool) in ds.pools.iter().enumerate() {
        assert_eq!(pool.clients.len(), 12);
        for lang in ["en", "de", "zh"] {
            let cs: Vec<&Client> = pool.clients.iter().filter(|c| c.language == lang).collect();
            assert_eq!(cs.len(), 4, "{lang}");
            assert_eq!(cs.iter().map(|c| c.train.len()).sum::<usize>(), 40);
            assert_eq!(cs.iter().map(|c| c.test.len()).sum::<usize>(), 12);
            // Sequential dealing: equal client sizes.
            assert!(cs.iter().all(|c| c.train.len() == 10 && c.test.len() == 3));
            assert!(cs.iter().all(|c| c.client_id / 4
                == (p * 3) as u32
                    + ["en", "de", "zh"].iter().position(|l| *l == lang).unwrap() as u32));
        }
    }
    // Seen and unseen never share a pair (within a language; XNLI is parallel across them).
    for split in [Split::Train, Split::Test] {
        let key = |e: &Example| (e.language.clone(), e.text_a.clone(), e.text_b.clone());
        let rows = all_examples(&ds, split);
        let seen: BTreeSet<_> = rows
            .iter()
            .filter(|(id, _)| *id < 12)
            .map(|(_, e)| key(e))
            .collect();
        let unseen: BTreeSet<_> = rows
            .iter()
            .filter(|(id, _)| *id >= 12)
            .map(|(_, e)| key(e))
            .collect();
        assert!(seen.is_disjoint(&unseen), "{split:?}");
    }
    // Train comes from XNLI test, test from XNLI dev by default.
    let dev = xnli::read_per_language_tsv(&fixtures().join("xnli/dev/en.tsv")).unwrap();
    let dev_premises: BTreeSet<_> = dev
        .iter()
        .map(|r| (r.premise.clone(), r.hypothesis.clone()))
        .collect();
    for (_, e) in all_examples(&ds, Split::Test)
        .iter()
        .filter(|(_, e)| e.language == "en")
    {
        assert!(dev_premises.contains(&(e.text_a.clone(), e.text_b.clone().unwrap())));
    }
}

#[test]
fn xnli_same_source_for_train_and_test_stays_disjoint() {
    let mut cfg = small_xnli();
    cfg.train_from = XnliSplit::Test;
    cfg.test_from = XnliSplit::Test;
    cfg.test_rows_per_pool = 5;
    let ds = partition_xnli(&fixtures().join("xnli"), &cfg, 1).unwrap();
    let key = |e: &Example| (e.language.clone(), e.text_a.clone(), e.text_b.clone());
    let train: BTreeSet<_> = all_examples(&ds, Split::Train)
        .iter()
        .map(|(_, e)| key(e))
        .collect();
    let test: BTreeSet<_> = all_examples(&ds, Split::Test)
        .iter()
        .map(|(_, e)| key(e))
        .collect();
    assert!(train.is_disjoint(&test));
    cfg.train_rows_per_pool = 45; // 2 × 45 + 2 × 5 > 90 rows
    let e = partition_xnli(&fixtures().join("xnli"), &cfg, 1).unwrap_err();
    assert!(
        matches!(
            e,
            DatasetError::NotEnoughRows {
                needed: 100,
                available: 90,
                ..
            }
        ),
        "{e}"
    );
}

fn write(ds: &PartitionedDataset, dir: &Path) -> PartitionSummary {
    write_partition(ds, dir).unwrap()
}

#[test]
fn same_seed_gives_identical_files_and_another_seed_a_different_split() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixtures().join("masakhanews");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let c = tmp.path().join("c");
    write(
        &partition_masakhanews(&dir, &small_masakha(), 42).unwrap(),
        &a,
    );
    write(
        &partition_masakhanews(&dir, &small_masakha(), 42).unwrap(),
        &b,
    );
    write(
        &partition_masakhanews(&dir, &small_masakha(), 52).unwrap(),
        &c,
    );
    for f in [
        "seen.parquet",
        "unseen.parquet",
        "summary.json",
        "client_sizes.csv",
    ] {
        assert_eq!(
            fs::read(a.join(f)).unwrap(),
            fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_ne!(
        fs::read(a.join("seen.parquet")).unwrap(),
        fs::read(c.join("seen.parquet")).unwrap()
    );
    let ra = PoolReader::open(a.join("seen.parquet")).unwrap();
    let rc = PoolReader::open(c.join("seen.parquet")).unwrap();
    let first = ra.load_client(0, Split::Train).unwrap();
    assert_ne!(first, rc.load_client(0, Split::Train).unwrap());
    // The directory holds exactly the four outputs (no staging leftovers).
    let mut names: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
}

#[test]
fn pool_files_read_back_with_arrow_and_pool_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = partition_xnli(&fixtures().join("xnli"), &small_xnli(), 7).unwrap();
    let summary = write(&ds, tmp.path());
    assert_eq!(summary.redraws, 0);
    assert_eq!(summary.pools[0].n_train, 120);
    let csv = fs::read_to_string(tmp.path().join("client_sizes.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 24);
    assert!(csv.starts_with("pool,client_id,language,n_train,n_test\nseen,0,en,10,3\n"));

    // Plain arrow read: schema, types, metadata.
    let file = fs::File::open(tmp.path().join("unseen.parquet")).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema().clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "client_id",
            "language",
            "split",
            "premise",
            "hypothesis",
            "label",
            "label_id"
        ]
    );
    assert_eq!(schema.field(0).data_type(), &DataType::UInt32);
    assert_eq!(schema.field(6).data_type(), &DataType::Int32);
    let kv: BTreeMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(kv["fedp2eft.task"], "classification");
    assert_eq!(
        kv["fedp2eft.labels"],
        r#"["entailment","neutral","contradiction"]"#
    );
    assert_eq!(
        builder.metadata().num_row_groups(),
        12,
        "one row group per client"
    );
    let mut rows = 0;
    let mut ids = BTreeSet::new();
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        rows += batch.num_rows();
        ids.extend(
            batch
                .column(0)
                .as_primitive::<UInt32Type>()
                .values()
                .iter()
                .copied(),
        );
    }
    assert_eq!(rows, 3 * (40 + 12));
    assert_eq!(ids, (12..24).collect());

    // PoolReader matches the in-memory partition.
    let reader = PoolReader::open(tmp.path().join("unseen.parquet")).unwrap();
    assert_eq!(reader.pool(), "unseen");
    assert_eq!(reader.labels(), ["entailment", "neutral", "contradiction"]);
    assert_eq!(reader.clients().len(), 12);
    for (info, client) in reader.clients().iter().zip(&ds.pools[1].clients) {
        assert_eq!(info.client_id, client.client_id);
        assert_eq!(info.language, client.language);
        assert_eq!(
            (info.n_train, info.n_test),
            (client.train.len(), client.test.len())
        );
        assert_eq!(
            reader.load_client(info.client_id, Split::Train).unwrap(),
            client.train
        );
        assert_eq!(
            reader.load_client(info.client_id, Split::Test).unwrap(),
            client.test
        );
    }
    assert!(matches!(
        reader.load_client(0, Split::Train).unwrap_err(),
        DatasetError::UnknownClient { client_id: 0, .. }
    ));
}

#[test]
fn smaller_alpha_gives_more_label_skew() {
    let mut cfg = small_xnli();
    cfg.train_rows_per_pool = 40;
    let mut means = Vec::new();
    for alpha in [0.1, 0.5, 100.0] {
        cfg.alpha = alpha;
        let mut total = 0.0;
        for seed in 0..8 {
            let ds = partition_xnli(&fixtures().join("xnli"), &cfg, seed).unwrap();
            let s = PartitionSummary::from_dataset(&ds);
            total += s
                .pools
                .iter()
                .map(|p| p.mean_train_label_entropy)
                .sum::<f64>()
                / 16.0;
        }
        means.push(total);
    }
    assert!(means[0] < means[1] && means[1] < means[2], "{means:?}");
}

#[test]
fn per_pool_language_matrices_and_proportional_dealing_work() {
    let mut cfg = small_masakha();
    cfg.matrix = MatrixSharing::PerPoolLanguage;
    cfg.dealing = DealingRule::Proportional;
    cfg.alpha = 0.3;
    let ds = partition_masakhanews(&fixtures().join("masakhanews"), &cfg, 5).unwrap();
    let n: usize = ds
        .pools
        .iter()
        .flat_map(|p| &p.clients)
        .map(|c| c.train.len())
        .sum();
    assert_eq!(n, 16 + 50);
    assert!(ds
        .pools
        .iter()
        .flat_map(|p| &p.clients)
        .all(|c| !c.train.is_empty()));
}

#[test]
fn errors_leave_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = |cfg: &MasakhaNewsConfig, data: &Path| -> Result<PartitionSummary> {
        let ds = partition_masakhanews(data, cfg, 42)?;
        write_partition(&ds, &out)
    };
    let data = fixtures().join("masakhanews");
    let mut cfg = small_masakha();
    cfg.alpha = 0.0;
    assert!(matches!(
        run(&cfg, &data).unwrap_err(),
        DatasetError::Config(_)
    ));
    cfg.alpha = -1.0;
    assert!(run(&cfg, &data).is_err());
    let mut cfg = small_masakha();
    cfg.clients_per_language = 6; // eng has 5 test rows per pool
    let e = run(&cfg, &data).unwrap_err();
    assert!(e.to_string().contains("more clients than rows"), "{e}");
    assert!(e.to_string().contains("eng"), "{e}");
    // A copy of the data with one broken file.
    let broken = tmp.path().join("broken");
    for lang in ["eng", "lin"] {
        fs::create_dir_all(broken.join(lang)).unwrap();
        for f in fs::read_dir(data.join(lang)).unwrap() {
            let f = f.unwrap();
            fs::copy(f.path(), broken.join(lang).join(f.file_name())).unwrap();
        }
    }
    fs::write(
        broken.join("lin/test.tsv"),
        "category\theadline\ttext\turl\nweather\th\tt\tu\n",
    )
    .unwrap();
    let e = run(&small_masakha(), &broken).unwrap_err();
    assert!(
        e.to_string().contains("lin/test.tsv") && e.to_string().contains("weather"),
        "{e}"
    );
    assert!(!out.exists());
    // A write that fails midway (output's parent is a file) leaves nothing behind either.
    let ds = partition_masakhanews(&data, &small_masakha(), 42).unwrap();
    let file_parent = tmp.path().join("file");
    fs::write(&file_parent, "x").unwrap();
    assert!(write_partition(&ds, &file_parent.join("out")).is_err());
    let left: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}"); // broken/ and file
}
