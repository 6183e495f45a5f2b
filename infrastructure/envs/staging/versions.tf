terraform {
  required_version = ">= 1.11"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }

  # State in S3 with S3-native locking (a lock file next to the state, Terraform >= 1.10).
  # The bucket is created once, before any root: see infrastructure/README.md.
  backend "s3" {
    bucket       = "opsweb-terraform-state"
    key          = "envs/staging/terraform.tfstate"
    region       = "eu-west-1"
    encrypt      = true
    use_lockfile = true
  }
}
