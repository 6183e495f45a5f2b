"""What matters in infrastructure/, read from the Terraform files themselves (python-hcl2).

terraform cannot run here (no binary, no AWS), so `terraform validate` is approximated below
(declared variables, module arguments, outputs and locals) and the rules of the release process
are asserted on the parsed configuration: every ECS service rolls a failed deployment back,
images are pinned by digest, secrets never sit in a container's plain environment, opsweb's task
role may do only what deploying needs, GitHub's deploy role only what deploy.yml does and only
for the develop branch, the production database is protected, and every root
keeps its state in S3 with locking. checkov (.ci/infra-checks) covers the generic AWS rules.
"""

import re
from functools import cache
from pathlib import Path

import hcl2
import pytest

from orchestration.ec2 import SETTINGS_KEYS as EC2_SETTINGS

INFRA = Path(__file__).resolve().parent.parent / "infrastructure"
MODULES = {path.name: path for path in sorted((INFRA / "modules").iterdir()) if path.is_dir()}
ROOTS = {name: INFRA / "envs" / name for name in ("dev", "staging", "production")}
# Example roots: checked like the others, not part of the promotion flow.
EXAMPLES = {"ec2": INFRA / "examples" / "ec2"}
OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)
SECRET_NAME = re.compile(r"(?i)secret|passw|token|credential|private_key|api_key|database_url")
WHOLE_REFERENCE = re.compile(r"^\$\{(local|var)\.(\w+)\}$")


@cache
def load(directory: Path) -> dict[str, list]:
    """All .tf files of one Terraform directory, merged by top-level block kind."""
    files = sorted(directory.glob("*.tf"))
    assert files, f"no .tf files in {directory}"
    merged: dict[str, list] = {}
    for path in files:
        with path.open() as handle:
            for kind, items in hcl2.load(handle, serialization_options=OPTIONS).items():
                merged.setdefault(kind, []).extend(items)
    return merged


def source(directory: Path) -> str:
    return "\n".join(path.read_text() for path in sorted(directory.glob("*.tf")))


def typed(config: dict, kind: str, type_: str) -> dict[str, dict]:
    """{name: body} of the `resource` or `data` blocks of one type."""
    found = {}
    for item in config.get(kind, []):
        found.update(item.get(type_, {}))
    return found


def named(config: dict, kind: str) -> dict[str, dict]:
    """{name: body} of `variable`, `output` or `module` blocks."""
    return {name: body for item in config.get(kind, []) for name, body in item.items()}


def local_values(config: dict) -> dict:
    return {name: value for item in config.get("locals", []) for name, value in item.items()}


def resolve(config: dict, value):
    """Follow a value that is only a reference to a local or a variable's default."""
    for _ in range(10):
        match = WHOLE_REFERENCE.match(value) if isinstance(value, str) else None
        if not match:
            return value
        kind, name = match.groups()
        if kind == "local":
            value = local_values(config)[name]
        else:
            variable = named(config, "variable")[name]
            if "default" not in variable:
                return value
            value = variable["default"]
    raise AssertionError(f"reference loop at {value}")


def every_config():
    yield from ((f"modules/{n}", p) for n, p in MODULES.items())
    yield from ((f"envs/{n}", p) for n, p in ROOTS.items())
    yield from ((f"examples/{n}", p) for n, p in EXAMPLES.items())


def containers(config: dict, task_definition: dict) -> list[dict]:
    """The container objects a task definition's jsonencode([...]) is built from."""
    expression = task_definition["container_definitions"]
    assert expression.startswith("${jsonencode("), (
        "container_definitions must be jsonencode() of locals, so that they can be checked"
    )
    found = [
        resolve(config, f"${{local.{name}}}") for name in re.findall(r"local\.(\w+)", expression)
    ]
    found = [c for c in found if isinstance(c, dict) and "image" in c]
    assert found, f"no container object found in {expression}"
    return found


def all_task_definitions():
    for label, directory in every_config():
        config = load(directory)
        for name, body in typed(config, "resource", "aws_ecs_task_definition").items():
            yield f"{label}: {name}", config, body


def statements(document: dict) -> list[dict]:
    """The statements of an aws_iam_policy_document, dynamic ones included."""
    found = list(document.get("statement", []))
    for dynamic in document.get("dynamic", []):
        if "statement" in dynamic:
            found.extend(dynamic["statement"]["content"])
    return found


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def conditions(statement: dict) -> dict[str, dict]:
    return {c["variable"]: c for c in statement.get("condition", [])}


# ---- deployments ----------------------------------------------------------------------------


def test_every_ecs_service_rolls_a_failed_deployment_back():
    services = {
        f"{label}: {name}": body
        for label, directory in every_config()
        for name, body in typed(load(directory), "resource", "aws_ecs_service").items()
    }
    # The application's environment, and opsweb's web and worker services.
    assert len(services) >= 3, services.keys()
    for name, service in services.items():
        assert service.get("deployment_circuit_breaker") == [{"enable": True, "rollback": True}], (
            name
        )


def test_opsweb_owns_the_application_services_revision_and_terraform_leaves_it_alone():
    config = load(MODULES["app_environment"])
    (service,) = typed(config, "resource", "aws_ecs_service").values()
    assert "task_definition" in service["lifecycle"][0]["ignore_changes"]
    # opsweb's own services are deployed by Terraform (a new image_digest), so it keeps them.
    for name, service in typed(load(MODULES["opsweb"]), "resource", "aws_ecs_service").items():
        ignored = service.get("lifecycle", [{}])[0].get("ignore_changes", [])
        assert "task_definition" not in ignored, name


def test_load_balancer_health_checks_hit_healthz_and_want_200():
    for module in ("app_environment", "opsweb"):
        config = load(MODULES[module])
        groups = typed(config, "resource", "aws_lb_target_group")
        assert groups, module
        for name, group in groups.items():
            (check,) = group["health_check"]
            assert resolve(config, check["path"]) == "/healthz", (module, name)
            assert check["matcher"] == "200", (module, name)
            assert group["target_type"] == "ip", (module, name)  # Fargate, awsvpc


def test_containers_read_only_with_a_scratch_tmp_and_logs_to_cloudwatch():
    for label, config, task_definition in all_task_definitions():
        assert task_definition["requires_compatibilities"] == ["FARGATE"], label
        assert {"name": "tmp"} in task_definition["volume"], label
        assert task_definition["execution_role_arn"] != task_definition["task_role_arn"], label
        for container in containers(config, task_definition):
            assert container["readonlyRootFilesystem"] is True, label
            assert {"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False} in (
                container["mountPoints"]
            ), label
            assert container["logConfiguration"]["logDriver"] == "awslogs", label


def test_opsweb_runs_web_and_worker_roles_of_one_image():
    config = load(MODULES["opsweb"])
    definitions = typed(config, "resource", "aws_ecs_task_definition")
    commands = {
        name: [c["command"] for c in containers(config, body)] for name, body in definitions.items()
    }
    assert commands == {"web": [["web"]], "worker": [["worker"]]}
    worker = containers(config, definitions["worker"])[0]
    assert worker["stopTimeout"] == 120  # the django-q2 cluster gets time to stop on SIGTERM


# ---- images -----------------------------------------------------------------------------------


def test_container_images_are_pinned_by_a_digest_variable():
    count = 0
    for label, config, task_definition in all_task_definitions():
        for container in containers(config, task_definition):
            count += 1
            image = resolve(config, container["image"])
            assert image == "${var.image_repository}@${var.image_digest}", (label, image)
    assert count >= 3, count


@pytest.mark.parametrize("module", ["app_environment", "opsweb", "ec2_environment"])
def test_the_digest_variable_refuses_tags(module):
    variable = named(load(MODULES[module]), "variable")["image_digest"]
    assert "default" not in variable  # always chosen, never "latest" by omission
    (validation,) = variable["validation"]
    assert "^sha256:[0-9a-f]{64}$" in validation["condition"]


def test_roots_pass_digests_from_variables_never_tags():
    for root, directory in {**ROOTS, **EXAMPLES}.items():
        config = load(directory)
        for name, call in named(config, "module").items():
            for key in ("image_digest", "image_repository"):
                if key in call:
                    value = call[key]
                    assert value.startswith("${") and "latest" not in value, (root, name, value)
        assert "latest" not in source(directory), root


def test_registries_have_immutable_tags_scanning_and_a_lifecycle():
    config = load(MODULES["ecr"])
    (repository,) = typed(config, "resource", "aws_ecr_repository").values()
    assert repository["image_tag_mutability"] == "IMMUTABLE"
    assert repository["image_scanning_configuration"] == [{"scan_on_push": True}]
    assert repository["encryption_configuration"][0]["encryption_type"] == "KMS"
    assert typed(config, "resource", "aws_ecr_lifecycle_policy")
    # Rollback needs the previous images: the lifecycle cannot be set to keep only a few.
    keep = named(config, "variable")["keep_images"]
    assert keep["default"] >= 50 and "var.keep_images >= 50" in keep["validation"][0]["condition"]


# ---- secrets -----------------------------------------------------------------------------------


def test_no_secret_in_a_containers_plain_environment():
    for label, config, task_definition in all_task_definitions():
        for container in containers(config, task_definition):
            environment = resolve(config, container.get("environment", []))
            if isinstance(environment, str):
                # Built from a variable: its validation must refuse secret-looking names.
                (variable,) = re.findall(r"var\.(\w+)", environment)[:1]
                validations = named(config, "variable")[variable].get("validation", [])
                assert any(
                    "secret" in v["condition"] and "database_url" in v["condition"]
                    for v in validations
                ), (label, variable)
                continue
            for entry in environment:
                assert not SECRET_NAME.search(entry["name"]), (label, entry)
                assert not re.search(
                    r"secretsmanager|random_password|ephemeral\.", str(entry["value"])
                ), (label, entry)


def test_opsweb_gets_secret_key_and_database_url_from_secrets_manager():
    config = load(MODULES["opsweb"])
    for name, task_definition in typed(config, "resource", "aws_ecs_task_definition").items():
        for container in containers(config, task_definition):
            secrets = {s["name"]: s["valueFrom"] for s in resolve(config, container["secrets"])}
            assert secrets == {
                "SECRET_KEY": "${aws_secretsmanager_secret.secret_key.arn}",
                "DATABASE_URL": "${aws_secretsmanager_secret.database_url.arn}",
                "OPSWEB_ECR_WEBHOOK_KEY": "${aws_secretsmanager_secret.ecr_webhook_key.arn}",
            }, name
            plain = {e["name"] for e in resolve(config, container["environment"])}
            assert not plain & {"SECRET_KEY", "DATABASE_URL"}, name


def test_application_secrets_must_be_secrets_manager_arns():
    config = load(MODULES["app_environment"])
    (validation,) = named(config, "variable")["secrets"]["validation"]
    assert ":secretsmanager:" in validation["condition"]


def test_generated_secrets_stay_out_of_the_terraform_state():
    config = load(MODULES["opsweb"])
    versions = typed(config, "resource", "aws_secretsmanager_secret_version")
    assert set(versions) == {"secret_key", "database_url", "ecr_webhook_key"}
    # The one exception, said in ecr_push.tf: an EventBridge connection has no write-only
    # argument, so the ECR webhook's key is in the state anyway (sensitive).
    ecr_key = versions.pop("ecr_webhook_key")
    assert ecr_key["secret_string"] == "${random_password.ecr_webhook_key.result}"
    (connection,) = typed(config, "resource", "aws_cloudwatch_event_connection").values()
    (parameters,) = connection["auth_parameters"]
    (api_key,) = parameters["api_key"]
    assert api_key == {
        "key": "X-Opsweb-Api-Key",
        "value": "${random_password.ecr_webhook_key.result}",
    }
    for name, version in versions.items():
        assert "secret_string" not in version, name  # written only through write-only args
        assert "ephemeral.random_password." in version["secret_string_wo"], name
    (database,) = typed(config, "resource", "aws_db_instance").values()
    assert "password" not in database
    assert database["password_wo"] == "${ephemeral.random_password.db.result}"
    generated = [
        item["random_password"] for item in config.get("resource", []) if "random_password" in item
    ]
    assert [set(g) for g in generated] == [{"ecr_webhook_key"}]
    for name, secret in typed(config, "resource", "aws_secretsmanager_secret").items():
        assert secret["kms_key_id"] == "${aws_kms_key.this.arn}", name


# ---- IAM --------------------------------------------------------------------------------------

# What deploying needs (orchestration/ecs.py): read and update the environments' services,
# follow their tasks, clone and register task definitions (tagged like the one cloned), pass
# the environments' roles to those revisions, read image metadata.
DEPLOYER_ACTIONS = {
    "ecs:DescribeServices",
    "ecs:UpdateService",
    "ecs:DescribeTasks",
    "ecs:ListTasks",
    "ecs:DescribeTaskDefinition",
    "ecs:RegisterTaskDefinition",
    "ecs:TagResource",
    "iam:PassRole",
    "ecr:DescribeImages",
    "ecr:BatchGetImage",
    "ecr:DescribeImageScanFindings",
}
# IAM accepts only "*" as the resource of these.
# The only AWS managed policies attached anywhere: RDS enhanced monitoring, and SSM's core
# policy on EC2 instances (how SSM Run Command reaches them).
MANAGED_POLICIES = (
    ":policy/service-role/AmazonRDSEnhancedMonitoringRole",
    ":iam::aws:policy/AmazonSSMManagedInstanceCore",
)
UNSCOPABLE = {
    "ecs:DescribeTaskDefinition",
    "ecs:RegisterTaskDefinition",
    "ecs:ListTasks",  # scoped by the ecs:cluster condition instead
    "ecr:GetAuthorizationToken",
}


def deployer() -> list[dict]:
    return statements(typed(load(MODULES["opsweb"]), "data", "aws_iam_policy_document")["deployer"])


def statement_with(action: str) -> dict:
    (found,) = [s for s in deployer() if action in s["actions"]]
    return found


def test_no_policy_anywhere_grants_wildcard_actions_or_unneeded_wildcard_resources():
    documents = 0
    for label, directory in every_config():
        config = load(directory)
        for name, document in typed(config, "data", "aws_iam_policy_document").items():
            documents += 1
            for statement in statements(document):
                actions = as_list(statement.get("actions", []))
                assert actions and "not_actions" not in statement, (label, name)
                assert not any("*" in action for action in actions), (label, name, actions)
                if "*" in as_list(statement.get("resources", [])):
                    assert set(actions) <= UNSCOPABLE, (label, name, actions)
        # Inline policies come from those documents, so this test has read them all.
        for name, policy in typed(config, "resource", "aws_iam_role_policy").items():
            document = r"\$\{data\.aws_iam_policy_document\.\w+\.json\}"
            assert re.fullmatch(document, policy["policy"]), (label, name)
        for name, attachment in typed(config, "resource", "aws_iam_role_policy_attachment").items():
            assert attachment["policy_arn"].endswith(MANAGED_POLICIES), (label, name)
        assert not typed(config, "resource", "aws_iam_policy"), label
    assert documents >= 6


def test_opsweb_task_role_may_only_deploy():
    config = load(MODULES["opsweb"])
    granted = {action for s in deployer() for action in as_list(s["actions"])}
    assert granted <= DEPLOYER_ACTIONS, granted - DEPLOYER_ACTIONS
    assert {"ecs:UpdateService", "ecs:RegisterTaskDefinition", "iam:PassRole"} <= granted
    assert all(s.get("effect", "Allow") == "Allow" for s in deployer())
    # The policy is the task role's, and both services run with that role.
    policy = typed(config, "resource", "aws_iam_role_policy")["deployer"]
    assert policy["role"] == "${aws_iam_role.task.id}"
    for name, task_definition in typed(config, "resource", "aws_ecs_task_definition").items():
        assert task_definition["task_role_arn"] == "${aws_iam_role.task.arn}", name


def test_opsweb_updates_only_the_managed_environments_services():
    config = load(MODULES["opsweb"])
    statement = statement_with("ecs:UpdateService")
    assert set(statement["actions"]) == {"ecs:DescribeServices", "ecs:UpdateService"}
    assert statement["resources"] == "${local.managed_service_arns}"
    arns = local_values(config)["managed_service_arns"]
    assert "for e in var.managed_environments" in arns
    assert ":service/${e.cluster_name}/${e.service_name}" in arns
    assert "ecs:cluster" in conditions(statement_with("ecs:ListTasks"))
    assert statement_with("ecs:DescribeTasks")["resources"] == "${local.managed_task_arns}"
    tagging = statement_with("ecs:TagResource")
    assert tagging["resources"] == "${local.managed_family_arns}"
    assert conditions(tagging)["ecs:CreateAction"]["values"] == ["RegisterTaskDefinition"]


def test_opsweb_passes_only_the_environments_task_and_execution_roles_to_ecs():
    config = load(MODULES["opsweb"])
    statement = statement_with("iam:PassRole")
    assert statement["actions"] == ["iam:PassRole"]
    assert statement["resources"] == "${local.passable_role_arns}"
    roles = local_values(config)["passable_role_arns"]
    assert ":role/${e.task_role_name}" in roles and ":role/${e.execution_role_name}" in roles
    assert "*" not in roles
    passed_to = conditions(statement)["iam:PassedToService"]
    assert passed_to["test"] == "StringEquals"
    assert passed_to["values"] == ["ecs-tasks.amazonaws.com"]
    # The environments are given by name and the names cannot smuggle in a wildcard or an ARN.
    validations = named(config, "variable")["managed_environments"]["validation"]
    assert any("^[A-Za-z0-9_.+=@/-]+$" in v["condition"] for v in validations)


def test_opsweb_reads_images_only_from_the_repositories_it_deploys():
    statement = statement_with("ecr:DescribeImages")
    assert all(a.startswith(("ecr:Describe", "ecr:BatchGet")) for a in statement["actions"])
    assert statement["resources"] == "${var.deployable_repository_arns}"


def test_production_opsweb_manages_every_environment_and_the_app_registry():
    config = load(ROOTS["production"])
    opsweb = named(config, "module")["opsweb"]
    assert opsweb["managed_environments"] == "${local.app_environments}"
    assert opsweb["deployable_repository_arns"] == ["${module.ecr_app.repository_arn}"]
    environments = local_values(config)["app_environments"]
    assert 'for env in ["dev", "staging", "production"]' in environments
    # ... named as the app_environment module names them in every root.
    for naming in ('"app-${env}"', '"app-${env}-task"', '"app-${env}-execution"'):
        assert naming in environments
    for root, directory in ROOTS.items():
        app = named(load(directory), "module")["app"]
        assert app["source"] == "../../modules/app_environment"
        assert app["name"] == "app-${local.environment}"
        assert local_values(load(directory))["environment"] == root
    module = load(MODULES["app_environment"])
    roles = {r["name"] for r in typed(module, "resource", "aws_iam_role").values()}
    assert roles == {"${var.name}-task", "${var.name}-execution"}


# ---- GitHub Actions deploy role (.github/workflows/deploy.yml) --------------------------------

WORKFLOW = INFRA.parent / ".github" / "workflows" / "deploy.yml"
OIDC = "token.actions.githubusercontent.com"
# Every AWS call deploy.yml makes, and the actions it needs: log in to ECR, push the image, read
# its digest. It registers the image through opsweb's HTTP API, signed in with its OIDC token.
WORKFLOW_CALLS = {
    "amazon-ecr-login": {"ecr:GetAuthorizationToken"},
    "docker push": {
        "ecr:BatchCheckLayerAvailability",
        "ecr:InitiateLayerUpload",
        "ecr:UploadLayerPart",
        "ecr:CompleteLayerUpload",
        "ecr:PutImage",
        "ecr:BatchGetImage",
    },
    "aws ecr describe-images": {"ecr:DescribeImages"},
}


def github_deploy() -> dict:
    return load(MODULES["github_deploy"])


def github_deploy_document(name: str) -> list[dict]:
    return statements(typed(github_deploy(), "data", "aws_iam_policy_document")[name])


def github_deploy_statement(action: str) -> dict:
    (found,) = [s for s in github_deploy_document("deploy") if action in as_list(s["actions"])]
    return found


def regex_of(validation: dict) -> re.Pattern:
    """The pattern of a validation written `can(regex("...", value))`."""
    (pattern,) = re.findall(r'regex\("(.+?)",\s*[\w.]+\)', validation["condition"])
    return re.compile(pattern.replace("\\\\", "\\"))


def test_the_workflow_makes_only_the_aws_calls_the_deploy_role_is_built_for():
    text = WORKFLOW.read_text()
    assert re.search(r"(?m)^on:\n  push:\n    branches: \[develop\]$", text)
    assert "role-to-assume: ${{ vars.AWS_ROLE_ARN }}" in text
    for call in WORKFLOW_CALLS:
        assert call in text, call
    # A new AWS call in deploy.yml must be added above, and to the role, deliberately.
    code = re.sub(r"(?m)^\s*#.*$", "", text)
    calls = set(re.findall(r"\baws \w+ (?:wait )?[a-z][a-z-]*", code))
    assert calls == {c for c in WORKFLOW_CALLS if c.startswith("aws ")}, calls


def test_the_workflow_registers_through_the_api_signed_in_with_its_oidc_token():
    text = WORKFLOW.read_text()
    assert "id-token: write" in text
    assert "${ACTIONS_ID_TOKEN_REQUEST_URL}&audience=${OPSWEB_AUDIENCE}" in text
    assert "call POST /auth/oidc" in text and "call POST /images" in text
    assert '/runs/${run_id}?wait=30"' in text and "Idempotency-Key:" in text
    assert "::add-mask::${OPSWEB_TOKEN}" in text  # the short-lived token never shows in logs
    assert "run-task" not in text and "OPSWEB_CLUSTER" not in text
    outputs = named(load(ROOTS["production"]), "output")
    assert outputs["opsweb_api_url"]["value"] == "${module.opsweb.api_url}"
    opsweb = named(load(MODULES["opsweb"]), "output")
    assert opsweb["api_url"]["value"] == "https://${var.host_name}/api/v1"


def test_github_deploy_role_trusts_only_the_develop_branch_of_the_configured_repository():
    config = github_deploy()
    (role,) = typed(config, "resource", "aws_iam_role").values()
    assert role["assume_role_policy"] == "${data.aws_iam_policy_document.trust.json}"
    (statement,) = github_deploy_document("trust")
    assert statement.get("effect", "Allow") == "Allow"
    assert as_list(statement["actions"]) == ["sts:AssumeRoleWithWebIdentity"]
    (principal,) = statement["principals"]
    assert principal["type"] == "Federated"
    assert principal["identifiers"] == ["${local.oidc_provider_arn}"]
    found = conditions(statement)
    assert set(found) == {f"{OIDC}:aud", f"{OIDC}:sub"}
    assert found[f"{OIDC}:aud"]["test"] == "StringEquals"
    assert found[f"{OIDC}:aud"]["values"] == ["sts.amazonaws.com"]
    sub = found[f"{OIDC}:sub"]
    assert sub["test"] == "StringEquals"  # an exact subject: no pattern matching at all
    (subject,) = [resolve(config, value) for value in as_list(sub["values"])]
    match = re.fullmatch(r"repo:(?P<repository>[^:]+):ref:refs/heads/develop", subject)
    assert match, subject
    assert match["repository"] == "${var.github_org}/${var.github_repo}"
    assert "*" not in subject and "?" not in subject
    # The repository is configured, and its parts cannot smuggle in a wildcard or a separator.
    variables = named(config, "variable")
    for name in ("github_org", "github_repo"):
        assert "default" not in variables[name], name
        (validation,) = variables[name]["validation"]
        pattern = regex_of(validation)
        assert pattern.search("opsweb"), name
        for bad in ("*", "ops*", "a/b", "a:b", "?", ""):
            assert not pattern.search(bad), (name, bad)
    production = named(load(ROOTS["production"]), "module")["github_deploy"]
    assert production["github_org"] == "${var.github_org}"
    assert production["github_repo"] == "${var.github_repo}"


def test_github_oidc_provider_is_created_once_or_looked_up():
    config = github_deploy()
    (provider,) = typed(config, "resource", "aws_iam_openid_connect_provider").values()
    (existing,) = typed(config, "data", "aws_iam_openid_connect_provider").values()
    assert provider["url"] == existing["url"] == f"https://{OIDC}"
    assert provider["client_id_list"] == ["sts.amazonaws.com"]
    assert provider["count"] == "${var.create_oidc_provider ? 1 : 0}"
    assert existing["count"] == "${var.create_oidc_provider ? 0 : 1}"
    arn = local_values(config)["oidc_provider_arn"]
    assert "aws_iam_openid_connect_provider.github[0].arn" in arn
    assert "data.aws_iam_openid_connect_provider.github[0].arn" in arn


def test_github_deploy_role_may_do_only_what_the_workflow_does():
    config = github_deploy()
    document = github_deploy_document("deploy")
    granted = [action for s in document for action in as_list(s["actions"])]
    assert not any("*" in action for action in granted), granted
    assert set(granted) == set().union(*WORKFLOW_CALLS.values())
    for statement in document:
        assert statement.get("effect", "Allow") == "Allow"
        assert "not_actions" not in statement and "not_resources" not in statement
        if "*" in as_list(statement["resources"]):
            assert as_list(statement["actions"]) == ["ecr:GetAuthorizationToken"]
    # The role's only policy is that document.
    (policy,) = typed(config, "resource", "aws_iam_role_policy").values()
    assert policy["policy"] == "${data.aws_iam_policy_document.deploy.json}"
    assert policy["role"] == "${aws_iam_role.this.id}"
    assert not typed(config, "resource", "aws_iam_role_policy_attachment")
    ecr = github_deploy_statement("ecr:PutImage")
    assert ecr["resources"] == ["${var.repository_arn}"]
    production = named(load(ROOTS["production"]), "module")["github_deploy"]
    assert production["source"] == "../../modules/github_deploy"
    assert production["repository_arn"] == "${module.ecr_app.repository_arn}"
    outputs = named(load(ROOTS["production"]), "output")
    assert outputs["github_deploy_role_arn"]["value"] == "${module.github_deploy.role_arn}"


# ---- database and state --------------------------------------------------------------------


def test_production_database_has_deletion_protection_and_multi_az():
    module = load(MODULES["opsweb"])
    (database,) = typed(module, "resource", "aws_db_instance").values()
    assert database["deletion_protection"] == "${var.deletion_protection}"
    assert database["multi_az"] == "${var.multi_az}"
    variables = named(module, "variable")
    assert variables["deletion_protection"]["default"] is True
    assert variables["multi_az"]["default"] is True
    assert database["storage_encrypted"] is True
    assert database["publicly_accessible"] is False
    assert database["skip_final_snapshot"] is False
    assert resolve(module, database["backup_retention_period"]) >= 7
    parameters = {
        p["name"]: p["value"]
        for p in typed(module, "resource", "aws_db_parameter_group")["this"]["parameter"]
    }
    assert parameters["rds.force_ssl"] == "1"
    opsweb = named(load(ROOTS["production"]), "module")["opsweb"]
    assert opsweb["source"] == "../../modules/opsweb"
    assert opsweb["deletion_protection"] is True
    assert opsweb["multi_az"] is True


STATE_ROOTS = {
    **{f"envs/{name}": path for name, path in ROOTS.items()},
    **{f"examples/{name}": path for name, path in EXAMPLES.items()},
}


@pytest.mark.parametrize("root", sorted(STATE_ROOTS))
def test_state_is_kept_in_s3_with_locking_and_encryption(root):
    config = load(STATE_ROOTS[root])
    (terraform,) = config["terraform"]
    (backend,) = terraform["backend"]
    assert list(backend) == ["s3"]
    s3 = backend["s3"]
    assert s3["bucket"] and s3["region"]
    assert s3["key"] == f"{root}/terraform.tfstate"
    assert s3["encrypt"] is True
    assert s3.get("use_lockfile") is True or s3.get("dynamodb_table"), "no state locking"


# ---- consistency (what `terraform validate` would catch) -------------------------------------


@pytest.mark.parametrize("label,directory", list(every_config()))
def test_references_are_declared(label, directory):
    config = load(directory)
    text = re.sub(r"(?m)#.*$", "", source(directory))
    declared = set(named(config, "variable"))
    used = set(re.findall(r"\bvar\.(\w+)", text))
    assert used <= declared, f"undeclared variables: {used - declared}"
    assert declared <= used, f"unused variables: {declared - used}"
    assert set(re.findall(r"\blocal\.(\w+)", text)) <= set(local_values(config))
    for output in named(config, "output").values():
        assert output.get("description"), output
    for name, variable in named(config, "variable").items():
        assert variable.get("description") and variable.get("type"), name


@pytest.mark.parametrize("label,directory", list(every_config()))
def test_module_calls_match_the_modules(label, directory):
    config = load(directory)
    calls = named(config, "module")
    text = re.sub(r"(?m)#.*$", "", source(directory))
    for name, call in calls.items():
        module = load((directory / call["source"]).resolve())
        variables = named(module, "variable")
        arguments = set(call) - {"source", "providers", "depends_on", "count", "for_each"}
        assert arguments <= set(variables), (name, arguments - set(variables))
        required = {v for v, body in variables.items() if "default" not in body}
        assert required <= arguments, (name, required - arguments)
        outputs = set(named(module, "output"))
        used = set(re.findall(rf"\bmodule\.{name}\.(\w+)", text))
        assert used <= outputs, (name, used - outputs)
    assert set(re.findall(r"\bmodule\.(\w+)\.", text)) <= set(calls)


def test_every_module_is_used_by_a_root():
    used = {
        Path(call["source"]).name
        for directory in [*ROOTS.values(), *EXAMPLES.values()]
        for call in named(load(directory), "module").values()
    }
    assert used == set(MODULES)
    assert used == {"app_environment", "opsweb", "ecr", "github_deploy", "ec2_environment"}


def test_log_groups_are_kept_a_year_and_encrypted():
    for label, directory in every_config():
        config = load(directory)
        for name, group in typed(config, "resource", "aws_cloudwatch_log_group").items():
            assert resolve(config, group["retention_in_days"]) >= 365, (label, name)
            assert group["kms_key_id"].startswith("${aws_kms_key."), (label, name)


# ---- the EC2 environment (orchestration/ec2/ deploys to it) ----------------------------------


def ec2_environment() -> dict:
    return load(MODULES["ec2_environment"])


def test_ec2_instances_boot_the_image_by_digest_with_imdsv2_and_encrypted_disks():
    config = ec2_environment()
    (template,) = typed(config, "resource", "aws_launch_template").values()
    (metadata,) = template["metadata_options"]
    assert metadata["http_tokens"] == "required"
    assert metadata["http_put_response_hop_limit"] == 1  # containers cannot reach the role
    (disk,) = template["block_device_mappings"]
    assert disk["ebs"][0]["encrypted"] is True
    assert template["user_data"] == "${base64encode(local.user_data)}"
    # The image comes from the parameter opsweb keeps current, and must be pinned by digest.
    (parameter,) = typed(config, "resource", "aws_ssm_parameter").values()
    assert parameter["value"] == "${var.image_repository}@${var.image_digest}"
    assert parameter["lifecycle"][0]["ignore_changes"] == ["value"]
    user_data = local_values(config)["user_data"]
    assert "aws ssm get-parameter" in user_data and "${aws_ssm_parameter.image.name}" in user_data
    assert "${var.image_repository}@sha256:*) ;;" in user_data
    assert 'docker pull "$IMAGE"' in user_data
    assert "aws ecr get-login-password" in user_data
    assert "Key=opsweb:image,Value=$IMAGE" in user_data  # what opsweb's drift check reads
    assert "--name ${var.container_name} --restart unless-stopped" in user_data


def test_ec2_instance_role_has_ssm_core_and_pulls_only_the_app_repository():
    config = ec2_environment()
    (attachment,) = typed(config, "resource", "aws_iam_role_policy_attachment").values()
    assert attachment["policy_arn"].endswith(":iam::aws:policy/AmazonSSMManagedInstanceCore")
    document = statements(typed(config, "data", "aws_iam_policy_document")["instance"])
    by_sid = {s["sid"]: s for s in document}
    assert as_list(by_sid["RegistryLogin"]["actions"]) == ["ecr:GetAuthorizationToken"]
    pull = by_sid["PullTheApplicationImage"]
    assert set(pull["actions"]) == {
        "ecr:BatchCheckLayerAvailability",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage",
    }
    assert pull["resources"] == ["${var.image_repository_arn}"]
    assert by_sid["ReadTheImageToStart"]["resources"] == ["${aws_ssm_parameter.image.arn}"]
    tagging = by_sid["TagInstancesWithTheirImage"]
    assert as_list(tagging["actions"]) == ["ec2:CreateTags"]
    found = conditions(tagging)
    assert found["aws:TagKeys"]["values"] == ["opsweb:image"]
    assert found["aws:ResourceTag/app-environment"]["values"] == ["${var.environment}"]
    assert set(by_sid) == {
        "RegistryLogin",
        "PullTheApplicationImage",
        "ReadTheImageToStart",
        "TagInstancesWithTheirImage",
    }


def test_ec2_group_sits_behind_a_health_checked_target_group():
    config = ec2_environment()
    (group,) = typed(config, "resource", "aws_lb_target_group").values()
    (check,) = group["health_check"]
    assert resolve(config, check["path"]) == "/healthz"
    assert check["matcher"] == "200"
    assert group["target_type"] == "instance"
    (asg,) = typed(config, "resource", "aws_autoscaling_group").values()
    assert asg["target_group_arns"] == ["${aws_lb_target_group.this.arn}"]
    assert asg["health_check_type"] == "ELB"
    assert asg["launch_template"][0]["version"] == "${aws_launch_template.this.latest_version}"
    # What opsweb's settings need is an output, so the environment can be configured from it.
    settings = named(config, "output")["opsweb_settings"]["value"]
    assert set(settings) <= EC2_SETTINGS
    assert {"auto_scaling_group", "target_group_arn", "image_parameter"} <= set(settings)
