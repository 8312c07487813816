// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title SettlementRegistry
/// @notice Append-only record of Tokenport's settlement periods, so that an auditor can check a
/// published settlement export against roots and totals that the operator committed on-chain
/// and can never change afterwards.
/// @dev Periods are numbered 1, 2, 3, ... with no gaps, and together they cover time without
/// gaps or overlaps: period n covers the half-open interval [fromTimestamp, toTimestamp) of
/// Unix seconds, and its fromTimestamp equals the toTimestamp of period n - 1. Money amounts
/// are in nano-USD (1 USD = 1,000,000,000 nano-USD), the unit of the Tokenport ledger. A
/// commitment stores only fixed-size fields, so the gas of `commitPeriod` does not depend on
/// how many records the roots cover. Every field is also emitted in `PeriodCommitted`, so the
/// history can be verified from logs alone.
contract SettlementRegistry {
    /// @notice One committed settlement period.
    /// @param fromTimestamp start of the period, inclusive, in Unix seconds
    /// @param toTimestamp end of the period, exclusive, in Unix seconds
    /// @param committedAtBlock number of the block that contains the commitment
    /// @param recordCount number of usage records under `recordsRoot`
    /// @param ledgerRoot Merkle root of the period's ledger transfers
    /// @param balancesRoot Merkle root of all account balances at `toTimestamp`
    /// @param recordsRoot Merkle root of the period's usage records
    /// @param totalLiabilitiesNanoUsd sum of what the platform owes buyers and suppliers at
    /// `toTimestamp`
    /// @param totalUsageNanoUsd cost of all usage records in the period
    /// @param totalDepositsNanoUsd deposits credited in the period
    /// @param totalPayoutsNanoUsd supplier payouts sent in the period
    struct Period {
        uint64 fromTimestamp;
        uint64 toTimestamp;
        uint64 committedAtBlock;
        uint32 recordCount;
        bytes32 ledgerRoot;
        bytes32 balancesRoot;
        bytes32 recordsRoot;
        uint256 totalLiabilitiesNanoUsd;
        uint256 totalUsageNanoUsd;
        uint256 totalDepositsNanoUsd;
        uint256 totalPayoutsNanoUsd;
    }

    /// @notice The only account that can commit periods, fixed at deployment.
    address public immutable operator;

    /// @notice Id of the last committed period, or 0 before the first commitment.
    uint64 public lastPeriodId;

    mapping(uint64 periodId => Period) private _periods;

    /// @notice The operator committed period `periodId`. The fields are those of `Period`.
    event PeriodCommitted(
        uint64 indexed periodId,
        bytes32 ledgerRoot,
        bytes32 balancesRoot,
        bytes32 recordsRoot,
        uint64 fromTimestamp,
        uint64 toTimestamp,
        uint256 totalLiabilitiesNanoUsd,
        uint256 totalUsageNanoUsd,
        uint256 totalDepositsNanoUsd,
        uint256 totalPayoutsNanoUsd,
        uint32 recordCount
    );

    /// @notice The constructor was given the zero address as operator.
    error ZeroOperator();
    /// @notice `caller` is not the operator.
    error NotOperator(address caller);
    /// @notice Period `periodId` is already committed and cannot be overwritten.
    error PeriodAlreadyCommitted(uint64 periodId);
    /// @notice The next period to commit is `expected`, not `periodId`.
    error PeriodIdNotNext(uint64 periodId, uint64 expected);
    /// @notice The period must start at `expected`, the end of the previous period.
    error PeriodStartMismatch(uint64 fromTimestamp, uint64 expected);
    /// @notice The period does not end after it starts.
    error EmptyPeriod(uint64 fromTimestamp, uint64 toTimestamp);
    /// @notice The period ends after the block timestamp, so it is not over yet.
    error PeriodNotEnded(uint64 toTimestamp, uint256 blockTimestamp);
    /// @notice Period `periodId` has not been committed.
    error PeriodNotCommitted(uint64 periodId);

    /// @param operator_ the account that commits periods
    constructor(address operator_) {
        if (operator_ == address(0)) {
            revert ZeroOperator();
        }
        operator = operator_;
    }

    /// @notice Commits settlement period `periodId`. Only the operator can call it.
    /// @param periodId `lastPeriodId() + 1`, so the first period is 1
    /// @param fromTimestamp start of the period, inclusive, in Unix seconds. From period 2 on it
    /// must equal the previous period's `toTimestamp`.
    /// @param toTimestamp end of the period, exclusive, in Unix seconds. It must be after
    /// `fromTimestamp` and not after the block timestamp.
    /// @param totalLiabilitiesNanoUsd what the platform owes buyers and suppliers at
    /// `toTimestamp`, in nano-USD
    /// @param totalUsageNanoUsd cost of the period's usage records, in nano-USD
    /// @param totalDepositsNanoUsd deposits credited in the period, in nano-USD
    /// @param totalPayoutsNanoUsd supplier payouts sent in the period, in nano-USD
    /// @param recordCount number of usage records under `recordsRoot`
    function commitPeriod(
        uint64 periodId,
        uint64 fromTimestamp,
        uint64 toTimestamp,
        bytes32 ledgerRoot,
        bytes32 balancesRoot,
        bytes32 recordsRoot,
        uint256 totalLiabilitiesNanoUsd,
        uint256 totalUsageNanoUsd,
        uint256 totalDepositsNanoUsd,
        uint256 totalPayoutsNanoUsd,
        uint32 recordCount
    ) external {
        if (msg.sender != operator) {
            revert NotOperator(msg.sender);
        }
        uint64 previousId = lastPeriodId;
        _checkPeriodBounds(periodId, previousId, fromTimestamp, toTimestamp);

        _periods[periodId] = Period({
            fromTimestamp: fromTimestamp,
            toTimestamp: toTimestamp,
            committedAtBlock: uint64(block.number),
            recordCount: recordCount,
            ledgerRoot: ledgerRoot,
            balancesRoot: balancesRoot,
            recordsRoot: recordsRoot,
            totalLiabilitiesNanoUsd: totalLiabilitiesNanoUsd,
            totalUsageNanoUsd: totalUsageNanoUsd,
            totalDepositsNanoUsd: totalDepositsNanoUsd,
            totalPayoutsNanoUsd: totalPayoutsNanoUsd
        });
        lastPeriodId = periodId;

        emit PeriodCommitted(
            periodId,
            ledgerRoot,
            balancesRoot,
            recordsRoot,
            fromTimestamp,
            toTimestamp,
            totalLiabilitiesNanoUsd,
            totalUsageNanoUsd,
            totalDepositsNanoUsd,
            totalPayoutsNanoUsd,
            recordCount
        );
    }

    /// @notice Returns the commitment of period `periodId`.
    /// @dev Reverts with `PeriodNotCommitted` for 0 and for ids after `lastPeriodId()`.
    function periods(uint64 periodId) external view returns (Period memory) {
        if (periodId == 0 || periodId > lastPeriodId) {
            revert PeriodNotCommitted(periodId);
        }
        return _periods[periodId];
    }

    function _checkPeriodBounds(uint64 periodId, uint64 previousId, uint64 fromTimestamp, uint64 toTimestamp)
        private
        view
    {
        uint64 expectedId = previousId + 1;
        if (periodId != expectedId) {
            if (periodId != 0 && periodId <= previousId) {
                revert PeriodAlreadyCommitted(periodId);
            }
            revert PeriodIdNotNext(periodId, expectedId);
        }
        if (previousId != 0) {
            uint64 previousEnd = _periods[previousId].toTimestamp;
            if (fromTimestamp != previousEnd) {
                revert PeriodStartMismatch(fromTimestamp, previousEnd);
            }
        }
        if (toTimestamp <= fromTimestamp) {
            revert EmptyPeriod(fromTimestamp, toTimestamp);
        }
        if (toTimestamp > block.timestamp) {
            revert PeriodNotEnded(toTimestamp, block.timestamp);
        }
    }
}
