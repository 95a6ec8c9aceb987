"""Events on the wire: schema, sources, Kafka producer and consumer, the local broker."""
