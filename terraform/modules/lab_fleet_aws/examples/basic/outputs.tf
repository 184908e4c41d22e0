output "hosts" {
  description = "Lab hosts keyed by \"<student>-<role>\"."
  value       = module.lab_fleet.hosts
}
