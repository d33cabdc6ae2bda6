/// Something klab needs from the machine that is missing. Its message names the thing and
/// how to get it; the CLI exits with `Requirement.exitCode`.
public struct Requirement: Error, CustomStringConvertible, Sendable {
    public static let exitCode: Int32 = 69  // EX_UNAVAILABLE
    public let description: String
    public init(_ description: String) { self.description = description }
}

