output "opsweb_settings" {
  description = "Backend settings for the opsweb environment that deploys here (backend \"ec2\")."
  value       = module.app.opsweb_settings
}

output "instance_role_name" {
  description = "Role of the instances; attach what the application itself needs to it."
  value       = module.app.instance_role_name
}
