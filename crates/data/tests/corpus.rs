mod common;

use std::fs;
use std::path::Path;

use common::message;
use truthgpt_data::corpus::{for_each_document, CorpusStats};
use truthgpt_data::DataError;

fn documents(path: &Path) -> Result<(Vec<String>, CorpusStats), DataError> {
    let mut docs = Vec::new();
    let stats = for_each_document(path, "text", |doc| {
        docs.push(doc.to_string());
        Ok(())
    })?;
    Ok((docs, stats))
}

#[test]
fn a_text_file_is_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("book.txt");
    fs::write(&path, "line one\nline two\n").unwrap();
    let (docs, stats) = documents(&path).unwrap();
    assert_eq!(docs, ["line one\nline two\n"]);
    assert_eq!(stats, CorpusStats { files: 1, documents: 1, bytes: 18 });
}

#[test]
fn jsonl_has_one_document_per_line_and_skips_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.jsonl", "b.ndjson"] {
        let path = dir.path().join(name);
        fs::write(&path, "{\"text\": \"first\", \"id\": 1}\n\n   \n{\"text\": \"caf\\u00e9 \u{1F642}\"}\n")
            .unwrap();
        let (docs, stats) = documents(&path).unwrap();
        assert_eq!(docs, ["first", "café 🙂"]);
        assert_eq!((stats.files, stats.documents), (1, 2));
    }
}

#[test]
fn a_directory_is_walked_in_sorted_order_skipping_hidden_and_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("b/nested")).unwrap();
    fs::create_dir_all(root.join(".git")).unwrap();
    fs::write(root.join("b/nested/z.md"), "z").unwrap();
    fs::write(root.join("b/a.text"), "b/a").unwrap();
    fs::write(root.join("a.txt"), "a").unwrap();
    fs::write(root.join("c.jsonl"), "{\"text\":\"c1\"}\n{\"text\":\"c2\"}\n").unwrap();
    fs::write(root.join(".hidden.txt"), "hidden").unwrap();
    fs::write(root.join(".git/config.txt"), "hidden").unwrap();
    fs::write(root.join("image.png"), [0xff, 0x00]).unwrap();
    fs::write(root.join("empty.txt"), "  \n").unwrap();
    let (docs, stats) = documents(root).unwrap();
    assert_eq!(docs, ["a", "b/a", "z", "c1", "c2"]);
    assert_eq!(stats.documents, 5);
}

#[test]
fn missing_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.txt");
    let err = documents(&path).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }));
    assert_eq!(err.to_string(), format!("data path {} does not exist", path.display()));
}

#[test]
fn an_empty_corpus_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.txt"), "").unwrap();
    fs::write(dir.path().join("b.jsonl"), "{\"text\": \"  \"}\n").unwrap();
    assert!(matches!(documents(dir.path()), Err(DataError::EmptyCorpus { .. })));
    let empty_dir = dir.path().join("empty");
    fs::create_dir(&empty_dir).unwrap();
    assert!(message(documents(&empty_dir)).contains(&*empty_dir.to_string_lossy()));
}

#[test]
fn bad_utf8_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.txt");
    fs::write(&path, b"caf\xe9").unwrap();
    let err = documents(&path).unwrap_err();
    assert!(matches!(err, DataError::NotUtf8 { .. }));
    assert!(err.to_string().contains("latin1.txt"), "{err}");
}

#[test]
fn bad_jsonl_lines_name_the_file_line_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.jsonl");
    let cases = [
        ("{\"text\": \"ok\"}\n{\"text\": \n", ":2:", "invalid JSON"),
        ("{\"body\": \"ok\"}\n", ":1:", "\"text\""),
        ("\n{\"text\": 3}\n", ":2:", "not a string"),
        ("[\"text\"]\n", ":1:", "not a JSON object"),
    ];
    for (content, line, problem) in cases {
        fs::write(&path, content).unwrap();
        let err = message(documents(&path));
        assert!(err.contains(&format!("docs.jsonl{line}")) && err.contains(problem), "{content:?}: {err}");
    }
}

#[test]
fn the_callback_error_stops_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.txt");
    fs::write(&path, "text").unwrap();
    let result = for_each_document(&path, "text", |_| Err(DataError::EmptyCorpus { path: "x".into() }));
    assert!(matches!(result, Err(DataError::EmptyCorpus { .. })));
}

#[test]
fn bad_utf8_in_jsonl_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.jsonl");
    fs::write(&path, b"{\"text\": \"ok\"}\r\n{\"text\": \"caf\xe9\"}\n").unwrap();
    let err = message(documents(&path));
    assert!(err.contains("docs.jsonl:2:") && err.contains("UTF-8"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_symlink_cycle_is_walked_once() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/a.txt"), "a").unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop")).unwrap();
    let (docs, _) = documents(dir.path()).unwrap();
    assert_eq!(docs, ["a"]);
}
