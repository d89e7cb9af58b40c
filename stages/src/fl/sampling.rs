//! Which clients train in a round. Flower (the authors' FL framework) samples
//! `max(floor(fraction · n), min_clients)` distinct clients uniformly without replacement;
//! the draw here is seeded per (run seed, stage, round), so a resumed run samples the same.

use rand::seq::index::sample;

use crate::rng::rng_from;

/// Distinct clients for one round, in the order drawn.
pub fn sample_clients(clients: &[u32], fraction: f64, min_clients: usize, seed: u64) -> Vec<u32> {
    let n = clients.len();
    if n == 0 {
        return Vec::new();
    }
    let wanted = ((fraction * n as f64).floor() as usize)
        .max(min_clients)
        .clamp(1, n);
    let mut rng = rng_from(seed);
    sample(&mut rng, n, wanted)
        .into_iter()
        .map(|i| clients[i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_percent_of_the_pool_distinct_and_reproducible() {
        let pool: Vec<u32> = (0..160).collect();
        let a = sample_clients(&pool, 0.1, 1, 7);
        assert_eq!(a.len(), 16);
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 16);
        assert_eq!(a, sample_clients(&pool, 0.1, 1, 7));
        assert_ne!(a, sample_clients(&pool, 0.1, 1, 8));
    }

    #[test]
    fn minimum_and_bounds() {
        let pool: Vec<u32> = (0..5).collect();
        assert_eq!(sample_clients(&pool, 0.1, 2, 1).len(), 2);
        assert_eq!(sample_clients(&pool, 1.0, 1, 1).len(), 5);
        assert_eq!(sample_clients(&pool, 0.0, 0, 1).len(), 1);
        assert!(sample_clients(&[], 0.5, 1, 1).is_empty());
    }
}
