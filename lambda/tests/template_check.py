"""The security properties of deploy/template.yaml, checked on the template
as written (run by lambda/tests/template.rs).

Usage: python3 template_check.py TEMPLATE

Prints one JSON object: the checks run on the template, the violations found
(must be none), and, for each mutation of the template that breaks one
property, whether the checks caught it (each must be caught: a check that
cannot fail proves nothing). Needs PyYAML (installed with cfn-lint).
"""

import copy
import json
import sys

import yaml


def load(path):
    """The template with CloudFormation's short tags as their long forms."""

    def tag(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            v = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            v = loader.construct_sequence(node, deep=True)
        else:
            v = loader.construct_mapping(node, deep=True)
        if suffix == "Ref":
            return {"Ref": v}
        if suffix == "GetAtt":
            return {"Fn::GetAtt": v.split(".", 1) if isinstance(v, str) else v}
        if suffix == "Condition":
            return {"Condition": v}
        return {"Fn::" + suffix: v}

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", tag)
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


def as_list(v):
    return v if isinstance(v, list) else [v]


def statements(node, where=""):
    """Every policy statement anywhere in `node`, with where it is."""
    if isinstance(node, dict):
        if "Statement" in node and isinstance(node["Statement"], list):
            for i, s in enumerate(node["Statement"]):
                yield f"{where}.Statement[{i}]", s
        for k, v in node.items():
            yield from statements(v, f"{where}.{k}" if where else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from statements(v, f"{where}[{i}]")


def wildcard_principal(p):
    if p == "*":
        return True
    if isinstance(p, dict):
        return any(x == "*" for v in p.values() for x in as_list(v))
    return False


def condition_keys(stmt):
    keys = set()
    for op in (stmt.get("Condition") or {}).values():
        if isinstance(op, dict):
            keys.update(op.keys())
    return keys


# Lambda's network-interface management cannot be scoped to resources.
ENI_ACTIONS = {
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}

RETAINED = ["FileSystem", "ProgressTable"]


def check(t):
    """(names of the checks run, violations found)."""
    res = t.get("Resources", {})
    params = t.get("Parameters", {})
    conds = t.get("Conditions", {})
    run, bad = [], []

    def rule(name, ok, why):
        run.append(name)
        if not ok:
            bad.append(f"{name}: {why}")

    # Deployed the way Rust Lambda users deploy: SAM, Cargo Lambda.
    transforms = as_list(t.get("Transform", []))
    rule("sam-transform", "AWS::Serverless-2016-10-31" in transforms, f"Transform is {transforms}")
    fns = [k for k, r in res.items() if r.get("Type") == "AWS::Serverless::Function"]
    rule("one-sam-function", len(fns) == 1, f"serverless functions: {fns}")
    for k in fns:
        meta = res[k].get("Metadata", {})
        rule("built-by-cargo-lambda", meta.get("BuildMethod") == "rust-cargolambda", f"{k} Metadata {meta}")

    # Policies: no wildcard principal in an Allow (gateway endpoints must
    # say "*" and then name the caller by aws:PrincipalArn: AWS's rule), no
    # wildcard action, no wildcard resource beyond the ENI actions.
    for where, s in statements(res):
        allow = s.get("Effect") == "Allow"
        if allow and "Principal" in s and wildcard_principal(s["Principal"]):
            rule("no-wildcard-principal", "aws:PrincipalArn" in condition_keys(s), f"{where} allows Principal *")
        if allow:
            acts = as_list(s.get("Action", []))
            rule("no-wildcard-action", not any(a == "*" or str(a).endswith(":*") for a in acts), f"{where}: {acts}")
            if any(r == "*" for r in as_list(s.get("Resource", []))):
                rule("resource-star-only-for-enis", set(acts) <= ENI_ACTIONS, f"{where}: {acts} on *")

    # Security groups: every group lists its egress (else AWS allows all),
    # nothing to or from anywhere.
    for k, r in res.items():
        typ, props = r.get("Type"), r.get("Properties", {})
        rules = []
        if typ == "AWS::EC2::SecurityGroup":
            rule("egress-listed", "SecurityGroupEgress" in props, f"{k} has AWS's allow-all egress")
            rules = as_list(props.get("SecurityGroupEgress", [])) + as_list(props.get("SecurityGroupIngress", []))
        elif typ in ("AWS::EC2::SecurityGroupEgress", "AWS::EC2::SecurityGroupIngress"):
            rules = [props]
        for x in rules:
            cidr = x.get("CidrIp"), x.get("CidrIpv6")
            rule("no-open-cidr", "0.0.0.0/0" not in cidr and "::/0" not in cidr, f"{k}: {x}")
    fsg = res.get("FunctionSecurityGroup", {}).get("Properties", {})
    for x in as_list(fsg.get("SecurityGroupEgress", [])):
        named = "DestinationSecurityGroupId" in x or "DestinationPrefixListId" in x
        rule("function-egress-named", named and "CidrIp" not in x, f"FunctionSecurityGroup egress {x}")
    def target(x):
        v = x.get("DestinationPrefixListId") or x.get("DestinationSecurityGroupId")
        return v.get("Ref") if isinstance(v, dict) else v

    egress = sorted((x.get("FromPort"), str(target(x))) for x in as_list(fsg.get("SecurityGroupEgress", [])))
    wanted = sorted([(2049, "EfsSecurityGroup"), (443, "EndpointSecurityGroup"),
                     (443, "DynamoDbPrefixListId"), (443, "S3PrefixListId")])
    rule("function-egress-exact", egress == wanted, f"FunctionSecurityGroup egress {egress}")

    # Every VPC endpoint has a policy; the Lambda endpoint's allows only
    # invoking this function.
    for k, r in res.items():
        if r.get("Type") == "AWS::EC2::VPCEndpoint":
            rule("endpoint-policy", "PolicyDocument" in r.get("Properties", {}), f"{k} has the default full-access policy")
    lam = [r for r in res.values() if r.get("Type") == "AWS::EC2::VPCEndpoint"
           and "lambda" in json.dumps(r["Properties"].get("ServiceName"))]
    rule("lambda-endpoint", len(lam) == 1, f"{len(lam)} Lambda endpoints")
    for r in lam:
        for where, s in statements(r["Properties"].get("PolicyDocument", {})):
            acts = as_list(s.get("Action", []))
            rule("lambda-endpoint-invoke-only", acts == ["lambda:InvokeFunction"], f"{where}: {acts}")
            subs = [r.get("Fn::Sub") if isinstance(r, dict) else r for r in as_list(s.get("Resource", []))]
            this = all(isinstance(a, str) and a.endswith((":function:${AWS::StackName}-fn", ":function:${AWS::StackName}-fn:*"))
                       for a in subs)
            rule("lambda-endpoint-this-function", this and subs, f"{where}: {subs}")

    # EFS: encrypted, a file-system policy requiring TLS and an access point.
    efs = res.get("FileSystem", {})
    rule("efs-encrypted", efs.get("Properties", {}).get("Encrypted") is True, "Encrypted is not true")
    pol = efs.get("Properties", {}).get("FileSystemPolicy")
    rule("efs-policy", pol is not None, "no FileSystemPolicy")
    sts = [s for _, s in statements(pol or {})]
    tls = any(s.get("Effect") == "Deny" and (s.get("Condition") or {}).get("Bool", {}).get("aws:SecureTransport") == "false"
              for s in sts)
    rule("efs-requires-tls", tls, "no Deny when aws:SecureTransport is false")
    ap = any(s.get("Effect") == "Deny" and (s.get("Condition") or {}).get("Null", {}).get("elasticfilesystem:AccessPointArn") == "true"
             for s in sts)
    rule("efs-requires-access-point", ap, "no Deny when no access point is used")
    allows = [s for s in sts if s.get("Effect") == "Allow"]
    rule("efs-allows-tls-only", all((s.get("Condition") or {}).get("Bool", {}).get("aws:SecureTransport") == "true"
                                    for s in allows) and allows, f"allows {allows}")

    # Data survives the stack unless a parameter says otherwise.
    retain = params.get("RetainData", {})
    rule("retain-default", retain.get("Default") == "Retain" and set(retain.get("AllowedValues", [])) == {"Retain", "Delete"},
         f"RetainData {retain}")
    for k in RETAINED:
        r = res.get(k, {})
        for p in ("DeletionPolicy", "UpdateReplacePolicy"):
            rule("retained", r.get(p) == {"Ref": "RetainData"}, f"{k} {p} is {r.get(p)}")
    pitr = res.get("ProgressTable", {}).get("Properties", {}).get("PointInTimeRecoverySpecification", {})
    on = pitr.get("PointInTimeRecoveryEnabled")
    cond = on.get("Fn::If", [None])[0] if isinstance(on, dict) else None
    expected_cond = {"Fn::Equals": [{"Ref": "PointInTimeRecovery"}, "true"]}
    rule("pitr", on == {"Fn::If": [cond, True, False]} and conds.get(cond) == expected_cond
         and params.get("PointInTimeRecovery", {}).get("Default") == "true", f"PITR {on}, condition {conds.get(cond)}")
    return run, bad


def mutations(t):
    """(name, template) pairs, each breaking one property."""

    def m(name, f):
        u = copy.deepcopy(t)
        f(u["Resources"], u)
        return name, u

    fsg = lambda r: r["FunctionSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    return [
        m("egress to 0.0.0.0/0", lambda r, u: fsg(r).append({"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": "0.0.0.0/0"})),
        m("egress rule removed from a group", lambda r, u: r["EndpointSecurityGroup"]["Properties"].pop("SecurityGroupEgress")),
        m("Lambda endpoint without a policy", lambda r, u: r["LambdaEndpoint"]["Properties"].pop("PolicyDocument")),
        m("Lambda endpoint allows lambda:*", lambda r, u: r["LambdaEndpoint"]["Properties"]["PolicyDocument"]["Statement"][0].update(Action="lambda:*")),
        m("Lambda endpoint for any function", lambda r, u: r["LambdaEndpoint"]["Properties"]["PolicyDocument"]["Statement"][0].update(Resource="*")),
        m("S3 endpoint for anyone", lambda r, u: r["S3Endpoint"]["Properties"]["PolicyDocument"]["Statement"][0].pop("Condition")),
        m("EFS without a policy", lambda r, u: r["FileSystem"]["Properties"].pop("FileSystemPolicy")),
        m("EFS without TLS", lambda r, u: r["FileSystem"]["Properties"]["FileSystemPolicy"]["Statement"].pop(1)),
        m("EFS without access points", lambda r, u: r["FileSystem"]["Properties"]["FileSystemPolicy"]["Statement"].pop(2)),
        m("table deleted with the stack", lambda r, u: r["ProgressTable"].update(DeletionPolicy="Delete")),
        m("file system replaced away", lambda r, u: r["FileSystem"].pop("UpdateReplacePolicy")),
        m("retention off by default", lambda r, u: u["Parameters"]["RetainData"].update(Default="Delete")),
        m("no point-in-time recovery", lambda r, u: r["ProgressTable"]["Properties"].pop("PointInTimeRecoverySpecification")),
        m("role with Action *", lambda r, u: r["FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
            {"Effect": "Allow", "Action": "*", "Resource": "*"})),
        m("queue policy for Principal *", lambda r, u: r.update(Open={"Type": "AWS::SQS::QueuePolicy", "Properties": {
            "Queues": [], "PolicyDocument": {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "sqs:SendMessage"}]}}})),
        m("plain function", lambda r, u: r["Function"].pop("Metadata")),
    ]


def main():
    t = load(sys.argv[1])
    run, bad = check(t)
    caught = {}
    for name, u in mutations(t):
        caught[name] = bool(check(u)[1])
    print(json.dumps({"checks": len(run), "distinct": sorted(set(run)), "violations": bad, "mutations": caught}))


if __name__ == "__main__":
    main()
