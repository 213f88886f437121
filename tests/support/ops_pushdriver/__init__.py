"""A test-only driver ("ops_push") whose devices push the realistic personal records of
``tests.support.ops_privacy_data`` through ``Bus.events()``, as an access-control panel,
parking camera, fall radar or alarm pillar would. Registered through a temporary entry
point (see ``tests.support.ops_stack.push_driver_site``); never installed with the product."""
