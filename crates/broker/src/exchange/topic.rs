//! Topic matching with RabbitMQ's rules: words are separated by `.`, `*` matches exactly
//! one word, `#` matches zero or more words; empty words are words.

/// Whether `pattern` matches `key`.
pub fn matches(pattern: &str, key: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    match_words(&p, &k)
}

fn match_words(p: &[&str], k: &[&str]) -> bool {
    // Iterative with one backtrack point per `#`, memo-free: patterns are short.
    let (mut pi, mut ki) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ki < k.len() {
        if pi < p.len() && p[pi] == "#" {
            star = Some((pi, ki));
            pi += 1;
        } else if pi < p.len() && (p[pi] == "*" || p[pi] == k[ki]) {
            pi += 1;
            ki += 1;
        } else if let Some((sp, sk)) = star {
            pi = sp + 1;
            ki = sk + 1;
            star = Some((sp, sk + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == "#" {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn rabbitmq_tutorial_cases() {
        assert!(matches("*.orange.*", "quick.orange.rabbit"));
        assert!(!matches("*.*.rabbit", "lazy.orange.elephant"));
        assert!(matches("lazy.#", "lazy"));
        assert!(matches("lazy.#", "lazy.pink.rabbit"));
        assert!(matches("#", ""));
        assert!(matches("#", "a.b.c"));
        assert!(!matches("*", "a.b"));
        assert!(matches("*", ""));
        assert!(matches("a.*.c", "a..c"));
        assert!(matches("#.c", "c"));
        assert!(!matches("a.*", "a"));
        assert!(matches("a.#.b.#", "a.b"));
    }
}
