//! The deployment template keeps its security properties: no wildcard
//! principal in an Allow (gateway endpoints name the function's role by
//! `aws:PrincipalArn`), no egress or ingress to 0.0.0.0/0, every security
//! group's egress listed (the function's exactly: NFS to EFS, HTTPS to the
//! Lambda endpoint and to the DynamoDB and S3 prefix lists), a policy on
//! every VPC endpoint (the Lambda one: `lambda:InvokeFunction` on this
//! function only), an EFS file-system policy requiring TLS and an access
//! point, the file system and the table retained by default, point-in-time
//! recovery on by default, and the function built by Cargo Lambda through
//! SAM. The checks are `template_check.py` (PyYAML, installed with
//! cfn-lint); each is also run on mutated templates, each of which must be
//! caught.

use std::process::Command;

#[test]
fn the_template_keeps_its_security_properties() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{dir}/tests/template_check.py"))
        .arg(format!("{dir}/../deploy/template.yaml"))
        .output()
        .expect("python3 runs (with PyYAML: pip install cfn-lint, as .ci/run does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON line");
    let violations = report["violations"].as_array().unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    // Every property was checked on something.
    let distinct: Vec<&str> = report["distinct"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for property in [
        "no-wildcard-principal",
        "no-open-cidr",
        "egress-listed",
        "function-egress-exact",
        "endpoint-policy",
        "lambda-endpoint-invoke-only",
        "lambda-endpoint-this-function",
        "efs-requires-tls",
        "efs-requires-access-point",
        "retained",
        "retain-default",
        "pitr",
        "built-by-cargo-lambda",
    ] {
        assert!(distinct.contains(&property), "{property} was never checked: {distinct:?}");
    }
    // And each can fail: every mutation of the template is caught.
    let mutations = report["mutations"].as_object().unwrap();
    assert!(mutations.len() >= 16, "{mutations:?}");
    let missed: Vec<&String> =
        mutations.iter().filter(|(_, caught)| caught != &&serde_json::json!(true)).map(|(m, _)| m).collect();
    assert!(missed.is_empty(), "mutations not caught: {missed:?}");
}
