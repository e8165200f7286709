//! Throughput of the wire codecs on the paths every message takes.
#![allow(missing_docs)]

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use popbridge_proto::{DotDecoder, DotStuffer};

fn message(size: usize) -> Vec<u8> {
    let line = b"The quick brown fox jumps over the lazy dog, and .dots start some lines\r\n";
    let mut m = Vec::with_capacity(size + line.len());
    while m.len() < size {
        m.extend_from_slice(if m.len() % 7 == 0 { &line[44..] } else { line });
    }
    m
}

fn codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("dot");
    for size in [10 * 1024, 1024 * 1024] {
        let msg = message(size);
        let wire = DotStuffer::stuff_all(&msg, false);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_with_input(BenchmarkId::new("stuff", size), &msg, |b, m| {
            b.iter(|| DotStuffer::stuff_all(m, false))
        });
        g.bench_with_input(BenchmarkId::new("stuff_normalize", size), &msg, |b, m| {
            b.iter(|| DotStuffer::stuff_all(m, true))
        });
        g.bench_with_input(BenchmarkId::new("unstuff", size), &wire, |b, w| {
            b.iter(|| {
                let mut out = BytesMut::with_capacity(w.len());
                let mut d = DotDecoder::new(u64::MAX);
                d.decode(w, &mut out).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
