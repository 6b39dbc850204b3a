use super::*;
use serde_json::json;

fn body(v: Value) -> PolicyBody {
    serde_json::from_value(v).unwrap()
}

fn cluster<'a>(name: &str, b: &'a PolicyBody) -> Source<'a> {
    Source {
        id: format!("ClusterMeshPolicy/{name}"),
        confined_to: None,
        namespace: None,
        body: b,
    }
}

fn namespaced<'a>(ns: &str, name: &str, b: &'a PolicyBody) -> Source<'a> {
    Source {
        id: format!("MeshPolicy/{ns}/{name}"),
        confined_to: Some(format!("tag:k8s-ns-{ns}")),
        namespace: Some(ns.to_string()),
        body: b,
    }
}

fn op() -> OperatorTags {
    OperatorTags {
        owners: vec!["k8s@".into()],
        tags: vec![
            "tag:k8s".into(),
            "tag:k8s-ns-a".into(),
            "tag:k8s-ns-b".into(),
        ],
    }
}

fn parsed(m: &Merged) -> Value {
    let json = meshscale_policy::hujson_to_json(&m.text).unwrap();
    serde_json::from_str(&json).unwrap()
}

#[test]
fn lists_concatenate_maps_merge_and_operator_tags_are_owned() {
    let base = body(json!({
        "groups": {"group:ops": ["alice@"]},
        "hosts": {"db": "10.0.0.5"},
        "acls": [{"action": "accept", "src": ["group:ops"], "dst": ["*:*"]}],
    }));
    let a = body(json!({
        "acls": [{"action": "accept", "src": ["tag:k8s-ns-b"], "dst": ["tag:k8s-ns-a:80"]}],
        "grants": [{"src": ["*"], "dst": ["tag:k8s-ns-a"], "ip": ["443"]}],
    }));
    let b = body(
        json!({"hujson": "{\n // comment\n \"acls\": [{\"action\": \"accept\", \"src\": [\"group:ops\"], \"dst\": [\"tag:k8s-ns-b:5432\"]},],\n}"}),
    );
    let m = merge(
        &[
            namespaced("b", "db", &b),
            namespaced("a", "web", &a),
            cluster("base", &base),
        ],
        &op(),
    )
    .unwrap();
    assert!(m.refused.is_empty(), "{:?}", m.refused);
    assert_eq!(
        m.accepted,
        [
            "ClusterMeshPolicy/base",
            "MeshPolicy/a/web",
            "MeshPolicy/b/db"
        ]
    );
    let p = parsed(&m);
    let dsts: Vec<&str> = p["acls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["dst"][0].as_str().unwrap())
        .collect();
    assert_eq!(dsts, ["*:*", "tag:k8s-ns-a:80", "tag:k8s-ns-b:5432"]);
    assert_eq!(p["grants"].as_array().unwrap().len(), 1);
    assert_eq!(p["groups"]["group:ops"], json!(["alice@"]));
    assert_eq!(p["hosts"]["db"], "10.0.0.5");
    for t in ["tag:k8s", "tag:k8s-ns-a", "tag:k8s-ns-b"] {
        assert_eq!(p["tagOwners"][t], json!(["k8s@"]), "{t}");
    }
    // The server's own parser accepts the result.
    meshscale_policy::Policy::parse(&m.text).unwrap();
    // Order of the inputs does not change the text.
    let again = merge(
        &[
            cluster("base", &base),
            namespaced("a", "web", &a),
            namespaced("b", "db", &b),
        ],
        &op(),
    )
    .unwrap();
    assert_eq!(again.text, m.text);
}

#[test]
fn a_conflicting_definition_refuses_the_merge_and_names_both_objects() {
    let one = body(json!({"groups": {"group:ops": ["alice@"]}}));
    let two = body(json!({"groups": {"group:ops": ["mallory@"]}}));
    let same = body(json!({"groups": {"group:ops": ["alice@", "alice@"]}}));
    let err = merge(&[cluster("one", &one), cluster("two", &two)], &op()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ClusterMeshPolicy/one"), "{msg}");
    assert!(msg.contains("ClusterMeshPolicy/two"), "{msg}");
    assert!(msg.contains("group:ops"), "{msg}");
    // The same definition twice is no conflict.
    merge(&[cluster("one", &one), cluster("same", &same)], &op()).unwrap();
    // A scalar setting too.
    let r1 = body(json!({"hujson": "{\"randomizeClientPort\": true}"}));
    let r2 = body(json!({"hujson": "{\"RandomizeClientPort\": false}"}));
    assert!(matches!(
        merge(&[cluster("r1", &r1), cluster("r2", &r2)], &op()),
        Err(MergeError::Conflict { .. })
    ));
}

#[test]
fn owners_of_operator_tags_are_united_not_conflicting() {
    let extra = body(json!({"tagOwners": {"tag:k8s-ns-a": ["team-a@"], "tag:db": ["ops@"]}}));
    let other = body(json!({"tagOwners": {"tag:db": ["dev@"]}}));
    let m = merge(&[cluster("extra", &extra)], &op()).unwrap();
    let p = parsed(&m);
    assert_eq!(p["tagOwners"]["tag:k8s-ns-a"], json!(["team-a@", "k8s@"]));
    assert_eq!(p["tagOwners"]["tag:db"], json!(["ops@"]));
    let err = merge(&[cluster("extra", &extra), cluster("other", &other)], &op()).unwrap_err();
    assert!(err.to_string().contains("tag:db"), "{err}");
}

#[test]
fn a_namespaced_policy_may_only_open_its_own_namespace() {
    let cases = [
        json!({"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:k8s-ns-b:80"]}]}),
        json!({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}),
        json!({"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:k8s-ns-a:80", "10.0.0.1:22"]}]}),
        json!({"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:k8s-ns-ab:80"]}]}),
        json!({"acls": [{"action": "accept", "src": ["*"], "DST": ["tag:k8s:80"]}]}),
        json!({"grants": [{"src": ["*"], "dst": ["tag:k8s-ns-b"], "ip": ["*"]}]}),
        json!({"grants": [{"src": ["*"], "dst": ["tag:k8s-ns-a"], "ip": ["*"], "via": ["tag:r"]}]}),
        json!({"ssh": [{"action": "accept", "src": ["*"], "dst": ["autogroup:self"], "users": ["root"]}]}),
        json!({"tagOwners": {"tag:k8s-ns-b": ["eve@"]}}),
        json!({"groups": {"group:ops": ["eve@"]}}),
        json!({"hujson": "{\"autoApprovers\": {\"exitNode\": [\"eve@\"]}}"}),
        json!({"hujson": "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"tag:k8s-ns-b:80\"]}]}"}),
    ];
    let ok =
        body(json!({"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:k8s-ns-b:443"]}]}));
    for case in cases {
        let bad = body(case.clone());
        let m = merge(
            &[namespaced("a", "bad", &bad), namespaced("b", "ok", &ok)],
            &op(),
        )
        .unwrap();
        let why = m
            .refused
            .get("MeshPolicy/a/bad")
            .unwrap_or_else(|| panic!("accepted: {case}"));
        assert!(!why.is_empty());
        // The other namespace's policy still goes through.
        assert_eq!(m.accepted, ["MeshPolicy/b/ok"], "{case}");
        assert!(!m.text.contains("eve@"), "{case}");
    }
    let m = merge(
        &[namespaced(
            "a",
            "bad",
            &body(
                json!({"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:k8s-ns-b:80"]}]}),
            ),
        )],
        &op(),
    )
    .unwrap();
    let why = &m.refused["MeshPolicy/a/bad"];
    assert!(
        why.contains("\"tag:k8s-ns-b:80\" is outside the namespace"),
        "{why}"
    );
    assert!(why.contains("tag:k8s-ns-a"), "{why}");
}

#[test]
fn a_namespaced_policy_may_open_its_namespace_to_anyone_with_its_own_names() {
    let good = body(json!({
        "groups": {"group:a-devs": ["dev@"]},
        "hosts": {"a-lb": "10.1.0.0/24"},
        "acls": [{"action": "accept", "src": ["group:a-devs", "a-lb", "tag:k8s-ns-b"], "dst": ["tag:k8s-ns-a:80,443"]}],
        "grants": [{"src": ["*"], "dst": ["tag:k8s-ns-a"], "ip": ["tcp:8080"]}],
        "ssh": [{"action": "accept", "src": ["group:a-devs"], "dst": ["tag:k8s-ns-a"], "users": ["root"]}],
        "tests": [{"src": "tag:k8s-ns-b", "accept": ["tag:k8s-ns-a:80"]}],
    }));
    let m = merge(&[namespaced("a", "good", &good)], &op()).unwrap();
    assert!(m.refused.is_empty(), "{:?}", m.refused);
    meshscale_policy::Policy::parse(&m.text).unwrap();
}

#[test]
fn bad_hujson_refuses_only_its_object() {
    let bad = body(json!({"hujson": "{ \"acls\": [ /* unterminated"}));
    let arr = body(json!({"hujson": "[1, 2]"}));
    let good = body(json!({"groups": {"group:x": ["x@"]}}));
    let m = merge(
        &[
            cluster("bad", &bad),
            cluster("arr", &arr),
            cluster("good", &good),
        ],
        &op(),
    )
    .unwrap();
    assert!(m.refused["ClusterMeshPolicy/bad"].starts_with("hujson:"));
    assert!(m.refused["ClusterMeshPolicy/arr"].contains("JSON object"));
    assert_eq!(m.accepted, ["ClusterMeshPolicy/good"]);
}

#[test]
fn no_policies_is_ownership_only() {
    let m = merge(&[], &op()).unwrap();
    let p = parsed(&m);
    assert_eq!(p["tagOwners"]["tag:k8s"], json!(["k8s@"]));
    assert!(p.get("acls").is_none());
    meshscale_policy::Policy::parse(&m.text).unwrap();
}

#[test]
fn a_clashing_namespaced_policy_is_refused_alone() {
    let base = body(json!({"groups": {"group:a-devs": ["alice@"]}}));
    let a = body(json!({
        "groups": {"group:a-devs": ["mallory@"]},
        "acls": [{"action": "accept", "src": ["group:a-devs"], "dst": ["tag:k8s-ns-a:22"]}],
    }));
    let b = body(json!({"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:k8s-ns-b:80"]}]}));
    let m = merge(
        &[
            cluster("base", &base),
            namespaced("a", "x", &a),
            namespaced("b", "y", &b),
        ],
        &op(),
    )
    .unwrap();
    let why = &m.refused["MeshPolicy/a/x"];
    assert!(
        why.contains("ClusterMeshPolicy/base") && why.contains("group:a-devs"),
        "{why}"
    );
    assert_eq!(m.accepted, ["ClusterMeshPolicy/base", "MeshPolicy/b/y"]);
    // Nothing of the refused object leaked into the result.
    assert!(
        !m.text.contains("mallory@") && !m.text.contains(":22"),
        "{}",
        m.text
    );
}

#[test]
fn without_namespace_tags_namespaced_policies_are_refused() {
    let a = body(json!({"acls": [{"action": "accept", "src": ["*"], "dst": [":80"]}]}));
    let mut s = namespaced("a", "x", &a);
    s.confined_to = Some(String::new());
    let m = merge(&[s], &op()).unwrap();
    assert!(m.refused["MeshPolicy/a/x"].contains("namespace tags are off"));
}
