"""Plotly figure builders shared by the dashboard, the HTML reports and the tests.

`charts`: the dashboard's exploration charts (centile fans, dependence, deviation
profiles, cohort summaries); `diagnostics`: calibration figures of an evaluation.
"""
