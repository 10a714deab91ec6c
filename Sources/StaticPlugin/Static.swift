enum Static {}
