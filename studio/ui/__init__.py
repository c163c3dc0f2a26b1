"""One module per tab: TAB_ID, TITLE, build(ctx) -> named components, optional wire(...)."""
