"""What distill and guard share: errors, recipes, run folders, measurement and cards."""
