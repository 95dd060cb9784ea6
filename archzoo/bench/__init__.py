"""Benchmarks: conversion quality, kernels, the Pareto report."""
