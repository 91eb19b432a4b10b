"""JSON Schemas shipped with ckpt-tool: ``output.schema.json`` describes every ``--json`` document."""
