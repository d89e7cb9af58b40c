//! Reader tests on real excerpts and on malformed files written into temp dirs.

mod common;

use std::fs;

use common::fixtures;
use datasets::readers::{fed_aya, masakhanews, xnli};
use datasets::{DatasetError, XnliFormat, XnliSplit};

#[test]
fn masakhanews_quoted_multiline_records_parse() {
    let dir = fixtures().join("masakhanews/eng");
    let labels = masakhanews::read_labels(&dir.join("labels.txt")).unwrap();
    assert_eq!(labels.len(), 6);
    let rows = masakhanews::read_split(&dir.join("dev.tsv"), &labels).unwrap();
    assert_eq!(rows.len(), 16, "records, not lines");
    assert!(rows.iter().filter(|r| r.text.contains('\n')).count() >= 12);
    // headline + " " + text, with the CSV-escaped "" turned back into ".
    assert!(rows[0].text.starts_with(
        "Rising costs leave Albrighton independent shops in limbo Independent shops in a \
         Shropshire village say they are \"in limbo\""
    ));
    assert_eq!(rows[0].label_id, 0, "business");
    let test = masakhanews::read_split(&dir.join("test.tsv"), &labels).unwrap();
    assert_eq!(test.len(), 10);
}

#[test]
fn masakhanews_language_without_train_uses_dev() {
    let eng = masakhanews::read_language(&fixtures().join("masakhanews"), "eng").unwrap();
    assert!(eng.train_missing);
    assert_eq!((eng.train.len(), eng.test.len()), (16, 10));
    let lin = masakhanews::read_language(&fixtures().join("masakhanews"), "lin").unwrap();
    assert!(!lin.train_missing);
    assert_eq!((lin.train.len(), lin.test.len()), (50, 20), "train + dev");
}

#[test]
fn xnli_per_language_tsv() {
    let langs = vec!["en".to_string(), "zh".to_string()];
    let dev = xnli::read_split(
        &fixtures().join("xnli"),
        XnliFormat::PerLanguageTsv,
        XnliSplit::Dev,
        &langs,
    )
    .unwrap();
    assert_eq!(dev["en"].len(), 40);
    assert_eq!(dev["en"][0].premise, "And he said, Mama, I'm home.");
    assert_eq!(dev["en"][0].label_id, 1, "neutral");
    // Parallel corpus: same labels row by row.
    let en: Vec<u32> = dev["en"].iter().map(|r| r.label_id).collect();
    let zh: Vec<u32> = dev["zh"].iter().map(|r| r.label_id).collect();
    assert_eq!(en, zh);
}

#[test]
fn xnli_original_and_hf_formats() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("xnli.dev.tsv"),
        "language\tgold_label\tsentence1_binary_parse\tsentence1\tsentence2\n\
         en\tneutral\t(x)\tA \"quoted\" premise.\tA hypothesis.\n\
         de\tcontradiction\t(x)\tEine Prämisse.\tEine Hypothese.\n\
         en\tentailment\t(x)\tSecond.\tSecond hyp.\n",
    )
    .unwrap();
    let langs = vec!["en".to_string(), "de".to_string()];
    let dev = xnli::read_split(tmp.path(), XnliFormat::Xnli10, XnliSplit::Dev, &langs).unwrap();
    assert_eq!(dev["en"].len(), 2);
    assert_eq!(dev["en"][0].premise, "A \"quoted\" premise.");
    assert_eq!(dev["de"][0].label_id, 2);
    fs::write(
        tmp.path().join("validation.jsonl"),
        r#"{"premise": {"de": "P-de", "en": "P-en"}, "hypothesis": {"language": ["de", "en"], "translation": ["H-de", "H-en"]}, "label": 0}
{"premise": {"de": "Q-de", "en": "Q-en"}, "hypothesis": {"language": ["de", "en"], "translation": ["I-de", "I-en"]}, "label": 2}
"#,
    )
    .unwrap();
    let hf = xnli::read_split(
        tmp.path(),
        XnliFormat::HfAllLanguagesJsonl,
        XnliSplit::Dev,
        &langs,
    )
    .unwrap();
    assert_eq!(hf["en"][1].premise, "Q-en");
    assert_eq!(hf["de"][0].hypothesis, "H-de");
    assert_eq!(hf["de"][1].label_id, 2);
}

fn news_dir(content: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("dev.tsv");
    fs::write(&p, content).unwrap();
    (tmp, p)
}

#[test]
fn malformed_news_files_give_clear_errors() {
    let labels = vec!["business".to_string(), "sports".to_string()];
    let (_t, p) = news_dir(b"category\theadline\turl\nsports\th\tu\n");
    let e = masakhanews::read_split(&p, &labels).unwrap_err();
    assert!(
        matches!(e, DatasetError::MissingColumn { ref column, .. } if column == "text"),
        "{e}"
    );
    assert!(e.to_string().contains("dev.tsv"));

    let (_t, p) = news_dir(b"category\theadline\ttext\turl\nsports\th\tt\tu\npolitics\th\tt\tu\n");
    let e = masakhanews::read_split(&p, &labels).unwrap_err();
    assert!(
        matches!(e, DatasetError::UnknownLabel { record: 2, ref label, .. } if label == "politics"),
        "{e}"
    );
    assert!(e.to_string().contains("record 2"), "{e}");

    let (_t, p) = news_dir(b"");
    assert!(matches!(
        masakhanews::read_split(&p, &labels).unwrap_err(),
        DatasetError::EmptyFile { .. }
    ));

    let (_t, p) = news_dir(b"category\theadline\ttext\turl\nsports\th\t\xff\xfe bad\tu\n");
    let e = masakhanews::read_split(&p, &labels).unwrap_err();
    assert!(
        matches!(e, DatasetError::BadRecord { record: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("UTF-8"), "{e}");

    let (_t, p) = news_dir(b"category\theadline\ttext\turl\nsports\th\tt\n");
    let e = masakhanews::read_split(&p, &labels).unwrap_err();
    assert!(e.to_string().contains("expected 4 fields"), "{e}");
}

#[test]
fn malformed_xnli_and_aya_files_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("en.tsv");
    fs::write(
        &p,
        "premise\thypothesis\tlabel\na\tb\tneutral\nc\td\tmaybe\n",
    )
    .unwrap();
    let e = xnli::read_per_language_tsv(&p).unwrap_err();
    assert!(
        e.to_string().contains("record 2") && e.to_string().contains("maybe"),
        "{e}"
    );

    let j = tmp.path().join("clients.json");
    fs::write(&j, r#"{"a": [{"instruction": "i", "language": "en"}]}"#).unwrap();
    let e = fed_aya::read_clients_file(&j, &["en".into()]).unwrap_err();
    assert!(
        e.to_string().contains("response") && e.to_string().contains("clients.json"),
        "{e}"
    );

    fs::write(
        &j,
        b"{\"a\": [{\"instruction\": \"\xff\", \"response\": \"r\", \"language\": \"en\"}]}",
    )
    .unwrap();
    assert!(matches!(
        fed_aya::read_clients_file(&j, &["en".into()]).unwrap_err(),
        DatasetError::BadJson { .. }
    ));
    fs::write(&j, "").unwrap();
    assert!(matches!(
        fed_aya::read_test_sets(&j).unwrap_err(),
        DatasetError::EmptyFile { .. }
    ));
    // Empty JSON is reported in JSON terms, not as a TSV without a header.
    for e in [
        fed_aya::read_test_sets(&j).unwrap_err(),
        fed_aya::read_clients_file(&j, &["en".into()]).unwrap_err(),
    ] {
        let m = e.to_string();
        assert!(m.contains("file is empty (expected a JSON object"), "{m}");
        assert!(!m.contains("header"), "{m}");
    }
    fs::write(&j, "{}").unwrap();
    let m = fed_aya::read_clients_file(&j, &["en".into()])
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("expected a JSON object with at least one client"),
        "{m}"
    );
    fs::write(
        &j,
        r#"{"Klingon": [{"instruction": "i", "reference": "r"}]}"#,
    )
    .unwrap();
    assert!(fed_aya::read_test_sets(&j)
        .unwrap_err()
        .to_string()
        .contains("Klingon"));
}

#[test]
fn aya_test_sets_real_file() {
    let rows = fed_aya::read_test_sets(&fixtures().join("fed_aya/aya_test_datasets.json")).unwrap();
    assert_eq!(rows.len(), 160);
    // File order: Standard_Arabic first, English second.
    assert_eq!(rows[0].language, "ar");
    assert_eq!(rows[20].language, "en");
    assert!(rows[20]
        .instruction
        .starts_with("While often confused with llamas"));
    assert_eq!(rows[20].response, "Alpaca");
}

#[test]
fn xnli_hf_parquet_export() {
    use arrow::array::{
        ArrayRef, Int64Array, ListBuilder, StringArray, StringBuilder, StructArray,
    };
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;
    // HF `xnli/all_languages` schema: premise struct, hypothesis struct of two lists, int label.
    let premise = StructArray::from(vec![
        (
            Arc::new(Field::new("de", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec!["P-de", "Q-de"])) as ArrayRef,
        ),
        (
            Arc::new(Field::new("en", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec!["P-en", "Q-en"])) as ArrayRef,
        ),
    ]);
    let mut lang = ListBuilder::new(StringBuilder::new());
    let mut text = ListBuilder::new(StringBuilder::new());
    for row in [["H", "I"], ["J", "K"]] {
        for (l, t) in ["de", "en"].iter().zip(row) {
            lang.values().append_value(l);
            text.values().append_value(format!("{t}-{l}"));
        }
        lang.append(true);
        text.append(true);
    }
    let lang: ArrayRef = Arc::new(lang.finish());
    let text: ArrayRef = Arc::new(text.finish());
    let hypothesis = StructArray::from(vec![
        (
            Arc::new(Field::new("language", lang.data_type().clone(), true)),
            lang,
        ),
        (
            Arc::new(Field::new("translation", text.data_type().clone(), true)),
            text,
        ),
    ]);
    let batch = arrow::array::RecordBatch::try_from_iter(vec![
        ("premise", Arc::new(premise) as ArrayRef),
        ("hypothesis", Arc::new(hypothesis) as ArrayRef),
        ("label", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
    ])
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = fs::File::create(tmp.path().join("test.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let langs = vec!["en".to_string(), "de".to_string()];
    let got = xnli::read_split(
        tmp.path(),
        XnliFormat::HfAllLanguagesParquet,
        XnliSplit::Test,
        &langs,
    )
    .unwrap();
    assert_eq!(got["en"][1].premise, "Q-en");
    assert_eq!(got["en"][1].hypothesis, "K-en");
    assert_eq!(got["de"][0].hypothesis, "H-de");
    assert_eq!(got["de"][1].label_id, 2);
    let missing = xnli::read_split(
        tmp.path(),
        XnliFormat::HfAllLanguagesParquet,
        XnliSplit::Test,
        &["fr".to_string()],
    )
    .unwrap_err();
    assert!(missing.to_string().contains("premise.fr"), "{missing}");
}
