//! Pure compute: models, PEFT, federated learning, PS generator, metrics.
