# The role .github/workflows/deploy.yml assumes by OIDC (aws-actions/configure-aws-credentials,
# role-to-assume = vars.AWS_ROLE_ARN), and nothing more than that workflow does:
#   amazon-ecr-login             ecr:GetAuthorizationToken
#   docker push                  layer upload and PutImage on the app repository
#   aws ecr describe-images      ecr:DescribeImages on that repository
# It registers the image with opsweb's HTTP API, signed in with the job's own OIDC token (an
# opsweb trust policy, not AWS, decides what that may do): no ECS or log access is needed.
# Only pushes to the develop branch of one repository may assume it.

locals {
  oidc_provider_arn = var.create_oidc_provider ? aws_iam_openid_connect_provider.github[0].arn : data.aws_iam_openid_connect_provider.github[0].arn

  # deploy.yml runs on pushes to develop. GitHub sends this subject for a job that names no
  # GitHub environment; a job with `environment: NAME` gets "repo:ORG/REPO:environment:NAME"
  # instead, which this role refuses (infrastructure/README.md).
  github_subject = "repo:${var.github_org}/${var.github_repo}:ref:refs/heads/develop"
}

# ---- the account's GitHub OIDC provider ----------------------------------------------------

resource "aws_iam_openid_connect_provider" "github" {
  count = var.create_oidc_provider ? 1 : 0

  url            = "https://token.actions.githubusercontent.com"
  client_id_list = ["sts.amazonaws.com"]
  # No thumbprint_list: IAM verifies GitHub's certificate against its trusted root CAs.
  tags = var.tags
}

data "aws_iam_openid_connect_provider" "github" {
  count = var.create_oidc_provider ? 0 : 1
  url   = "https://token.actions.githubusercontent.com"
}

# ---- the role -------------------------------------------------------------------------------

data "aws_iam_policy_document" "trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [local.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = [local.github_subject]
    }
  }
}

resource "aws_iam_role" "this" {
  name                 = var.name
  description          = "GitHub Actions deploy.yml of ${var.github_org}/${var.github_repo}, branch develop"
  assume_role_policy   = data.aws_iam_policy_document.trust.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "deploy" {
  statement {
    sid       = "RegistryLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # this action has no resource-level permissions
  }

  statement {
    sid = "PushAndReadTheAppImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:InitiateLayerUpload",
      "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload",
      "ecr:PutImage",
      "ecr:BatchGetImage",
      "ecr:DescribeImages",
    ]
    resources = [var.repository_arn]
  }
}

resource "aws_iam_role_policy" "deploy" {
  name   = "deploy-develop"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.deploy.json
}
