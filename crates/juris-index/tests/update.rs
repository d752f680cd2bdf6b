//! Incremental updates equal fresh builds (compared by document id).

mod common;

use common::{random_corpus, Rng};
use juris_index::{update_index_analyzed, Index, IndexError, NoProgress, ScorerConfig, ScorerKind};
use std::collections::HashMap;

type Corpus = Vec<(String, Vec<String>)>;

fn scores_by_id(index: &Index, q: &[String]) -> HashMap<String, f32> {
    let s = index.score_all(q).unwrap();
    (0..index.n_docs())
        .map(|d| (index.doc_id(d).unwrap().to_string(), s[d as usize]))
        .collect()
}

fn assert_same(a: &Index, b: &Index, seed: u64) {
    assert_eq!(a.n_docs(), b.n_docs());
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        (sa.n_terms, sa.n_postings, sa.total_terms),
        (sb.n_terms, sb.n_postings, sb.total_terms)
    );
    let mut r = Rng(seed);
    for kind in ScorerKind::ALL {
        let (va, vb) = (
            a.with_scorer(ScorerConfig::new(kind)).unwrap(),
            b.with_scorer(ScorerConfig::new(kind)).unwrap(),
        );
        for _ in 0..10 {
            let q: Vec<String> = (0..1 + r.below(5))
                .map(|_| format!("t{}", r.zipf(120)))
                .collect();
            assert_eq!(scores_by_id(&va, &q), scores_by_id(&vb, &q), "{kind} {q:?}");
            let ha: Vec<(String, f32)> = va
                .search_terms(&q, 10)
                .unwrap()
                .iter()
                .map(|h| (va.doc_id(h.doc).unwrap().to_string(), h.score))
                .collect();
            let hb: Vec<(String, f32)> = vb
                .search_terms(&q, 10)
                .unwrap()
                .iter()
                .map(|h| (vb.doc_id(h.doc).unwrap().to_string(), h.score))
                .collect();
            // Same scores rank for rank; ids may differ only within ties.
            assert_eq!(
                ha.iter().map(|x| x.1).collect::<Vec<_>>(),
                hb.iter().map(|x| x.1).collect::<Vec<_>>()
            );
        }
    }
    for d in 0..a.n_docs() {
        let id = a.doc_id(d).unwrap();
        let other = b.lookup_id(id).expect("same ids");
        assert_eq!(a.doc(d).unwrap(), b.doc(other).unwrap());
    }
}

fn add(
    dir: &std::path::Path,
    docs: &Corpus,
    delete: &[String],
) -> Result<juris_index::UpdateReport, IndexError> {
    update_index_analyzed(
        dir,
        docs.iter().map(|(id, t)| (common::doc(id, t), t.clone())),
        delete,
        &NoProgress,
    )
}

#[test]
fn build_then_add_equals_build_of_union() {
    let all = random_corpus(21, 400, 120);
    let (a, b) = all.split_at(300);
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let full = common::build(d1.path(), &all, ScorerConfig::default());
    common::build(d2.path(), a, ScorerConfig::default());
    let report = add(d2.path(), &b.to_vec(), &[]).unwrap();
    assert_eq!((report.added, report.replaced, report.deleted), (100, 0, 0));
    assert_eq!(report.build.generation, 2);
    let updated = Index::open(d2.path()).unwrap();
    updated.verify().unwrap();
    assert_same(&full, &updated, 1);
}

#[test]
fn delete_equals_build_without() {
    let all = random_corpus(22, 300, 120);
    let gone: Vec<String> = vec!["doc-0".into(), "doc-17".into(), "doc-299".into()];
    let kept: Corpus = all
        .iter()
        .filter(|(id, _)| !gone.contains(id))
        .cloned()
        .collect();
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let fresh = common::build(d1.path(), &kept, ScorerConfig::default());
    common::build(d2.path(), &all, ScorerConfig::default());
    let report = add(d2.path(), &vec![], &gone).unwrap();
    assert_eq!(report.deleted, 3);
    let updated = Index::open(d2.path()).unwrap();
    updated.verify().unwrap();
    assert_eq!(updated.lookup_id("doc-17"), None);
    assert_same(&fresh, &updated, 2);
}

#[test]
fn added_document_with_existing_id_replaces_it() {
    let all = random_corpus(23, 200, 120);
    let new_terms: Vec<String> = vec!["t1".into(), "brand-new".into(), "t1".into()];
    let replaced: Corpus = all
        .iter()
        .map(|(id, t)| {
            if id == "doc-5" {
                (id.clone(), new_terms.clone())
            } else {
                (id.clone(), t.clone())
            }
        })
        .collect();
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let fresh = common::build(d1.path(), &replaced, ScorerConfig::new(ScorerKind::Bm25L));
    common::build(d2.path(), &all, ScorerConfig::new(ScorerKind::Bm25L));
    let report = add(d2.path(), &vec![("doc-5".into(), new_terms.clone())], &[]).unwrap();
    assert_eq!((report.added, report.replaced), (0, 1));
    let updated = Index::open(d2.path()).unwrap();
    assert_eq!(
        updated
            .doc(updated.lookup_id("doc-5").unwrap())
            .unwrap()
            .text,
        new_terms.join(" ")
    );
    assert_eq!(updated.doc_freq("brand-new"), Some(1));
    assert_same(&fresh, &updated, 3);
}

#[test]
fn unknown_delete_or_duplicate_add_leaves_index_untouched() {
    let all = random_corpus(24, 50, 30);
    let dir = tempfile::tempdir().unwrap();
    common::build(dir.path(), &all, ScorerConfig::default());
    let manifest = std::fs::read(dir.path().join("juris-index.json")).unwrap();
    match add(
        dir.path(),
        &vec![],
        &["doc-1".into(), "ghost".into(), "phantom".into()],
    ) {
        Err(e @ IndexError::UnknownIds { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("ghost, phantom") && msg.contains("unchanged"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let dup: Corpus = vec![
        ("n1".into(), vec!["a".into()]),
        ("n1".into(), vec!["b".into()]),
    ];
    assert!(matches!(
        add(dir.path(), &dup, &[]),
        Err(IndexError::DuplicateId { .. })
    ));
    let everything: Vec<String> = all.iter().map(|(id, _)| id.clone()).collect();
    assert!(matches!(
        add(dir.path(), &vec![], &everything),
        Err(IndexError::EmptyCorpus { .. })
    ));
    assert_eq!(
        std::fs::read(dir.path().join("juris-index.json")).unwrap(),
        manifest
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    Index::open(dir.path()).unwrap().verify().unwrap();
}
