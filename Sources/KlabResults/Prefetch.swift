import Foundation

/// Runs a record decoder on a thread of its own, a few thousand records ahead of the
/// consumer: reading and decoding the files takes one core while the consumer (klab check's
/// join) takes the other. Memory stays bounded: at most `depth` batches wait.
final class Prefetch<Item> {
    /// What the decoding thread and the consumer share.
    private final class Channel: @unchecked Sendable {
        let cond = NSCondition()
        var batches: [[Item]] = []
        var finished = false, cancelled = false
        var failure: Error?
    }
    private let channel = Channel()
    private var local: [Item] = []
    private var at = 0

    /// The decoder, owned by its thread from the start.
    private struct Producer: @unchecked Sendable { let next: () throws -> Item? }

    /// `produce` returns the next record, nil at the end; it runs on the new thread only.
    init(name: String, batch: Int = 1024, depth: Int = 4, _ produce: @escaping () throws -> Item?) {
        let ch = channel, producer = Producer(next: produce)
        let t = Thread {
            let produce = producer.next
            var items: [Item] = []
            items.reserveCapacity(batch)
            var failure: Error?
            var more = true
            while more {
                do {
                    while items.count < batch, let x = try produce() { items.append(x) }
                } catch {
                    failure = error
                }
                more = items.count == batch && failure == nil
                ch.cond.lock()
                while ch.batches.count >= depth && !ch.cancelled { ch.cond.wait() }
                if ch.cancelled { more = false }
                if !items.isEmpty { ch.batches.append(items) }
                if !more { (ch.finished, ch.failure) = (true, failure) }
                ch.cond.broadcast()
                ch.cond.unlock()
                items = []
                items.reserveCapacity(batch)
            }
        }
        t.name = name
        t.start()
    }

    deinit {
        channel.cond.lock()
        channel.cancelled = true
        channel.cond.broadcast()
        channel.cond.unlock()
    }

    /// The next batch from the thread; nil once it has ended and every batch was taken.
    private func take() throws -> [Item]? {
        channel.cond.lock()
        defer { channel.cond.unlock() }
        while channel.batches.isEmpty && !channel.finished { channel.cond.wait() }
        if channel.batches.isEmpty {
            if let e = channel.failure { throw e }
            return nil
        }
        channel.cond.broadcast()
        return channel.batches.removeFirst()
    }

    /// Whether at least `n` records from the current position are at hand (false: the
    /// stream has fewer left).
    private func fill(_ n: Int) throws -> Bool {
        while local.count - at < n {
            guard let b = try take() else { return false }
            if at == local.count {
                (local, at) = (b, 0)
            } else {
                local.removeFirst(at)
                at = 0
                local += b
            }
        }
        return true
    }

    /// Whether the decoding thread has ended (its reader's counters are then final).
    var ended: Bool { channel.cond.withLock { channel.finished } }

    func next() throws -> Item? {
        guard try at < local.count || fill(1) else { return nil }
        defer { at += 1 }
        return local[at]
    }

    /// The `i`-th record after the one `next` returned last.
    func peek(_ i: Int) throws -> Item? {
        guard try at + i < local.count || fill(i + 1) else { return nil }
        return local[at + i]
    }
}
