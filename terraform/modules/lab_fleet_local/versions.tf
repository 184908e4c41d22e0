terraform {
  # terraform_data (built in, no provider download) needs 1.4+.
  required_version = ">= 1.4"
}
