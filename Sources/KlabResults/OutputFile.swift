import Foundation
import KlabSystem

/// A results file being written: through a buffer, retrying short writes and EINTR, with
/// the failure named. A `whole` file is written under a temporary name and gets its own when
/// closed, so a reader never sees half of it; dropped before that, it leaves nothing behind.
public final class OutputFile {
    public let path: String
    private let writing: String
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var closed = false

    public init(_ path: String, whole: Bool) throws {
        self.path = path
        let writing = whole ? path + ".partial" : path
        self.writing = writing
        fd = retryingEINTR { open(writing, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
        guard fd >= 0 else { throw ResultsError(path, "cannot create it: \(Errno.text(errno))") }
    }

    deinit {
        guard !closed else { return }
        Glibc.close(fd)
        if writing != path { unlink(writing) }
    }

    /// Adds bytes; they reach the file once a megabyte is buffered, or at `flush`.
    public func write(_ bytes: some Sequence<UInt8>) throws {
        buffer.append(contentsOf: bytes)
        if buffer.count >= 1 << 20 { try flush() }
    }

    public func flush() throws {
        defer { buffer.removeAll(keepingCapacity: true) }
        try buffer.withUnsafeBytes { try writeAll($0) }
    }

    /// Writes `bytes` after what is buffered, without copying them into the buffer: for a
    /// caller that gathers its own chunks.
    public func write(unbuffered bytes: UnsafeRawBufferPointer) throws {
        try flush()
        try writeAll(bytes)
    }

    private func writeAll(_ b: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < b.count {
            let n = retryingEINTR { Glibc.write(fd, b.baseAddress! + done, b.count - done) }
            if n <= 0 { throw ResultsError(path, "writing it failed: \(Errno.text(n < 0 ? errno : EIO))") }
            done += n
        }
    }

    /// Writes `bytes` as the whole file at `path`: under a temporary name beside it, then
    /// renamed (Foundation's atomic write leaves an empty folder in /tmp every time).
    public static func write(_ bytes: some Sequence<UInt8>, to path: String) throws {
        let file = try OutputFile(path, whole: true)
        try file.write(bytes)
        try file.close()
    }

    /// Writes what is left and, for a whole file, gives it its name.
    public func close() throws {
        try flush()
        Glibc.close(fd)
        closed = true
        if writing != path, rename(writing, path) != 0 {
            let e = errno
            unlink(writing)
            throw ResultsError(path, "cannot rename \(writing) to it: \(Errno.text(e))")
        }
    }
}
