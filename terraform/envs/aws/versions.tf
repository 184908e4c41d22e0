terraform {
  required_version = ">= 1.5.0"

  # State lives in the cohort folder: `labkit fleet up` runs
  # `terraform init -backend-config=path=inventories/<cohort>/terraform.tfstate`
  # with TF_DATA_DIR=inventories/<cohort>/.terraform, so cohorts never share state.
  backend "local" {}

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.30"
    }
  }
}
