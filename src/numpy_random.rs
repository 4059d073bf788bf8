//! NumPy's legacy random stream, reproduced exactly: `np.random.seed(n)` then
//! `np.random.shuffle(x)`, which is how the study split its objects (seed 42). The same
//! list in the same order gives the same permutation as NumPy (tests/it/science.rs checks
//! it against NumPy's own output, committed in tests/data).
//!
//! The generator is MT19937 (Matsumoto and Nishimura), seeded as NumPy's legacy
//! `mt19937_seed` (Knuth's multiplier 1812433253), and the shuffle is NumPy's: from the
//! last element down, swap with an index drawn by `random_interval`, which masks 32-bit
//! draws to the smallest covering power of two and rejects those above the bound.

const N: usize = 624;
const M: usize = 397;

/// MT19937 as NumPy's legacy `RandomState` runs it.
pub struct Mt19937 {
    state: [u32; N],
    next: usize,
}

impl Mt19937 {
    /// `np.random.seed(seed)` for an integer seed (NumPy accepts 0 to 2³² − 1).
    pub fn new(seed: u32) -> Mt19937 {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, next: N }
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.next >= N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX: u32 = 0x9908_b0df;
        for i in 0..N {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % N] & LOWER);
            let mut v = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 == 1 {
                v ^= MATRIX;
            }
            self.state[i] = v;
        }
        self.next = 0;
    }

    /// A uniform integer in [0, max] (NumPy's `random_interval`, for bounds below 2³²).
    pub fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16] {
            mask |= mask >> shift;
        }
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `np.random.shuffle(items)`: in place, as NumPy does it.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.interval(i as u32) as usize;
            items.swap(i, j);
        }
    }
}
