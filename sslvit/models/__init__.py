"""Plain nn.Modules and pure functions: nothing here knows about Lightning."""
