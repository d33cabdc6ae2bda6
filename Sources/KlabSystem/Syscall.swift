import Glibc

/// An errno value and its text, in one place instead of `strerror` calls scattered around.
public enum Errno {
    /// strerror(3) of `code`: "Operation not permitted".
    public static func text(_ code: Int32) -> String { String(cString: strerror(code)) }
}

/// What every kernel-call error says: the call, its errno, a library's own words (libnl,
/// libpcap, libbpf) when it has them, and what the user can do about it.
public protocol CallError: Error, CustomStringConvertible, Sendable {
    /// The call that failed, with what it was called on: "open(/dev/net/tun)".
    var call: String { get }
    /// Its errno, or 0 when the failure has none (a library's own error code).
    var errno: Int32 { get }
    var detail: String? { get }
    var hint: String? { get }
}

extension CallError {
    /// "open(/dev/net/tun) failed: No such file or directory (hint)"; with neither errno nor
    /// detail, the call alone is the message.
    public var description: String {
        let reasons = (errno != 0 ? [Errno.text(errno)] : []) + (detail.map { $0.isEmpty ? [] : [$0] } ?? [])
        let text = reasons.isEmpty ? call : "\(call) failed: " + reasons.joined(separator: ": ")
        return text + (hint.map { " (\($0))" } ?? "")
    }
}

/// A failed kernel call in the lab: the call, its errno, and what the user can do about it.
public struct LabError: CallError {
    public let call: String
    public let errno: Int32
    public let detail: String?
    public let hint: String?

    /// With errno 0 and no detail, `call` is the whole message.
    public init(_ call: String, errno: Int32 = Glibc.errno, detail: String? = nil, hint: String? = nil) {
        self.call = call
        self.errno = errno
        self.detail = detail
        self.hint = hint
    }
}

/// Runs a libc call that returns -1 and sets errno, retrying while it fails with EINTR: the
/// one place klab loops on EINTR. For callers that decide themselves what a failure means
/// (a scenario's read loop); the others use `sys`.
@inlinable @inline(__always)
public func retryingEINTR<T: FixedWidthInteger & SignedInteger>(_ body: () -> T) -> T {
    while true {
        let r = body()
        if r >= 0 || Glibc.errno != EINTR { return r }
    }
}

/// Runs a libc call that returns -1 and sets errno, retrying on EINTR; any other failure
/// throws `LabError` with the call's name, its errno and `hint`.
@discardableResult @inlinable @inline(__always)
public func sys<T: FixedWidthInteger & SignedInteger>(
    _ name: @autoclosure () -> String, hint: @autoclosure () -> String? = nil, _ body: () -> T
) throws -> T {
    let r = retryingEINTR(body)
    if r >= 0 { return r }
    let e = Glibc.errno  // before the name and hint are built
    throw LabError(name(), errno: e, hint: hint())
}
