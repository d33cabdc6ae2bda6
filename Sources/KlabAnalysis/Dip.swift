import Foundation

/// Hartigan's dip test of unimodality (placeholder until implemented).
public enum Dip {
    public struct Result: Sendable, Encodable {
        public let dip: Double
        public let pValue: Double
        public let samples: Int
        public let replicates: Int
        public let method: String
    }
    public static func test(_ xs: [Double], seed: UInt64 = 1) -> Result? { nil }
}
